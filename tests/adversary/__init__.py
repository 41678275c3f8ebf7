"""Attacks on real server processes, and inputs at their bounds and one past; each ends
with the cluster serving."""
