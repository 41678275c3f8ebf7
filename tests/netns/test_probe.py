"""The suite's skip reason: the probe says why namespaces cannot be made, on any machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from .network import probe


def test_probe_without_ip_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `ip` on it
    reason = probe()
    assert reason is not None
    assert "no `ip` command" in reason and "iproute2" in reason


def test_probe_where_ip_is_refused_gives_ips_own_words(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As in a container without CAP_SYS_ADMIN: `ip netns` fails, and the reason quotes it."""
    fake = tmp_path / "ip"
    refusal = "mount --make-shared /run/netns failed: Operation not permitted"
    fake.write_text(f'#!/bin/sh\necho "{refusal}" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = probe()
    assert reason is not None
    assert reason.startswith("cannot make network namespaces here")
    assert "Operation not permitted" in reason
