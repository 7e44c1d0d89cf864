"""Control: command leases and their states, convergence, the allocation function, dispatch.

Plain Python and numpy over the runtime; the facade (:mod:`twin.fleet.control`) wires it to the
shards, the store, the clock and a :class:`~twin.control.transport.CommandTransport`.
"""
