"""Attacks on real server processes; each ends with the cluster serving, linearizably."""
