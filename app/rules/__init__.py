"""The decisions, with no I/O: how statuses merge, what a body must be, which lists a number is
on, how rows are shown, which addresses deliveries may reach."""
