"""The facade: :class:`Fleet` and the collaborators it owns (ingest path, model changes,
subscriptions, recovery, failover, timers, commands, metrics), all sharing one
:class:`~twin.fleet.core.FleetCore`."""
