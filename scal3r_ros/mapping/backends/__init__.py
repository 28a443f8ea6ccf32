"""Backends: the protocol the engine talks to, the factory, and each network (Scal3R, oracle)."""
