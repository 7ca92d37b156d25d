"""Every query, the tables, the migrations' runner and the batching writer; driver exceptions
become app.errors here."""
