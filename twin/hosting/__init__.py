"""Hosting: the only package that speaks Thespian. Shard hosts and the fleet supervisor as
Thespian actors, the facade's typed client to them, and nodes that join from other machines."""
