"""Deterministic simulation of RaftCore clusters under faults (see simulator.py)."""
