"""The domain core: errors, clock, kinds, the fleet model and its changes in time, samples and
outcome codes, states, roll-up values, views and key formats. Imports only the standard library,
msgpack and structlog: everything else in twin is built on it."""
