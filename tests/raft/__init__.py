"""Paper tests of the sans-I/O Raft core: one claim each, init / act / check."""
