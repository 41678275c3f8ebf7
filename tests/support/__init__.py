"""Test-suite support that is not shipped: pytest fixtures, the stand-in server.

Nothing under ``src/kvraft`` may import pytest (a plain ``pip install kvraft``
has no pytest), so what needs it lives here.
"""
