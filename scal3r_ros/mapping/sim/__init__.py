"""Simulation: the synthetic drive the oracle backend, the demo and the tests use."""
