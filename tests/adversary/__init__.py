"""Adversarial tests on real servers: inputs at their bounds and one past (issue 11)."""
