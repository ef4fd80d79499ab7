"""Fault runs and the soak run of the gateway (issue #7, items 4 and 6): ``./scripts/faults``
and ``./scripts/soak``. Real processes on real brokers on loopback; tests/gateway's helpers
start the brokers and stand in for the router."""
