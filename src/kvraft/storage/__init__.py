"""See the package docstring of kvraft."""
