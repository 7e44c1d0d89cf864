"""Control: command leases, convergence, allocation, dispatch."""
