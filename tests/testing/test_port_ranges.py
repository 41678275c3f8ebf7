"""reserve_port within a range of the process's own (``$KVRAFT_TEST_PORTS``), so that
test processes running side by side (pytest-xdist workers) never hand out one port twice."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kvraft.testing import processes


def test_reserved_ports_stay_inside_the_given_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(processes.PORT_RANGE_ENV, "20000-20003")
    ports = [processes.reserve_port() for _ in range(4)]
    try:
        assert sorted(ports) == [20000, 20001, 20002, 20003]
        # All four taken: the fifth has nowhere to go, and says so.
        with pytest.raises(RuntimeError, match="no free port in KVRAFT_TEST_PORTS=20000-20003"):
            processes.reserve_port()
    finally:
        processes.release_ports(ports)


@pytest.mark.parametrize(
    "spec",
    ["20000", "a-b", "1023-2000", "2000-2000", "3000-2000", "60000-65536"],
)
def test_a_malformed_or_out_of_bounds_range_is_refused(
    monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    monkeypatch.setenv(processes.PORT_RANGE_ENV, spec)
    with pytest.raises(ValueError, match="KVRAFT_TEST_PORTS"):
        processes.reserve_port()


def test_the_bounds_themselves_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """1024 and 65535 are inside the bounds: no ValueError. (A port of the range may be
    in use on this machine; then the refusal names the range, not the spec.)"""
    for spec, expected in (("1024-1025", {1024, 1025}), ("65534-65535", {65534, 65535})):
        monkeypatch.setenv(processes.PORT_RANGE_ENV, spec)
        try:
            port = processes.reserve_port()
        except RuntimeError as exc:
            assert f"no free port in KVRAFT_TEST_PORTS={spec}" in str(exc)
        else:
            processes.release_ports([port])
            assert port in expected


def test_shares_of_the_default_range_are_disjoint_and_cover_no_ephemeral_port() -> None:
    shares = [processes.port_range_share(i, 3) for i in range(3)]
    if shares[0] is None:
        pytest.skip("the kernel's ephemeral range leaves no room below it")
    spans = [tuple(int(p) for p in s.split("-")) for s in shares if s is not None]
    assert spans[0][0] == 10000
    for (_, high), (low, _) in itertools.pairwise(spans):
        assert high < low
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert spans[-1][1] < ephemeral_low
    assert processes.port_range_share(3, 3) is None
    assert processes.port_range_share(-1, 3) is None
