"""Everything that calls the outside world: pushing stored changes to downstream endpoints
(the forwarder and its HTTP client)."""
