"""``kvraft snapshot save|status|restore``: exit codes and one-line errors, as a user sees them.

Exit codes (kvraft.cli): 0 ok, 1 a damaged file or a refused restore, 2 usage, 3 no node answered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.backup.support import CLUSTER_ID, write_backup
from tests.cli.conftest import assert_one_line_error, free_base_port, run_cli

EXIT_OP_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
PEERS = "0=127.0.0.1:7101,1=127.0.0.1:7102,2=127.0.0.1:7103"


def test_status_prints_what_a_good_backup_holds(tmp_path: Path) -> None:
    write_backup(tmp_path / "b.kvb", index=42, term=3)
    human = run_cli("snapshot", "status", str(tmp_path / "b.kvb"))
    assert human.returncode == 0, human.stderr
    assert "checksum OK" in human.stdout and "index 42, term 3, revision 5, 5 keys" in human.stdout
    machine = run_cli("snapshot", "status", str(tmp_path / "b.kvb"), "--json")
    document = json.loads(machine.stdout)
    assert document["ok"] is True
    assert (document["index"], document["keys"], document["cluster_id"]) == (42, 5, CLUSTER_ID)


@pytest.mark.parametrize(
    ("damage", "message"),
    [(lambda b: b[:-3], "truncated"), (lambda b: b[:-1] + b"?", "data checksum mismatch"),
     (lambda b: b"junk" + b, "bad magic")],
    ids=["truncated", "checksum", "magic"],
)  # fmt: skip
def test_status_of_a_damaged_backup_exits_1_naming_the_damage(
    tmp_path: Path, damage, message: str
) -> None:  # type: ignore[no-untyped-def]
    good = write_backup(tmp_path / "good.kvb")
    (tmp_path / "bad.kvb").write_bytes(damage(good))
    result = run_cli("snapshot", "status", str(tmp_path / "bad.kvb"))
    assert_one_line_error(result, EXIT_OP_ERROR, "bad.kvb", message)
    machine = run_cli("snapshot", "status", str(tmp_path / "bad.kvb"), "--json")
    assert machine.returncode == EXIT_OP_ERROR
    assert json.loads(machine.stdout)["ok"] is False


def test_status_of_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = run_cli("snapshot", "status", str(tmp_path / "none.kvb"))
    assert_one_line_error(result, EXIT_OP_ERROR, "cannot read")


def test_restore_prints_the_new_cluster_id_on_its_last_line(tmp_path: Path) -> None:
    write_backup(tmp_path / "b.kvb")
    result = run_cli("snapshot", "restore", str(tmp_path / "b.kvb"), "--data-dir",
                     str(tmp_path / "n0"), "--id", "0", "--peers", PEERS)  # fmt: skip
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.splitlines()[-1]
    assert new_id.startswith("restored-")
    assert f"start it with --cluster-id {new_id}" in result.stdout


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        ("used-dir", ["--id", "0", "--peers", PEERS], EXIT_OP_ERROR, "not an empty directory"),
        ("", ["--id", "5", "--peers", PEERS], EXIT_OP_ERROR, "--id 5 is not one of --peers"),
        ("", ["--id", "0", "--peers", PEERS, "--cluster-id", CLUSTER_ID], EXIT_OP_ERROR,
         "needs a new cluster id"),
        ("damaged", ["--id", "0", "--peers", PEERS], EXIT_OP_ERROR, "data checksum mismatch"),
        ("", ["--id", "0", "--peers", "garbage"], EXIT_USAGE, "expected ID=HOST:PORT"),
        ("", ["--peers", PEERS], EXIT_USAGE, "--id"),
    ],
    ids=["used-dir", "bad-id", "old-cluster-id", "damaged", "bad-peers", "no-id"],
)  # fmt: skip
def test_a_refused_restore_exits_with_one_line_and_writes_nothing(
    tmp_path: Path, setup: str, args: list[str], code: int, message: str
) -> None:
    good = write_backup(tmp_path / "b.kvb")
    data_dir = tmp_path / "n0"
    if setup == "used-dir":
        data_dir.mkdir()
        (data_dir / "other").write_text("x")
    if setup == "damaged":
        (tmp_path / "b.kvb").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    result = run_cli(
        "snapshot", "restore", str(tmp_path / "b.kvb"), "--data-dir", str(data_dir), *args
    )
    assert_one_line_error(result, code, message)
    assert not (data_dir / "raft.db").exists()


def test_save_with_no_node_answering_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    result = run_cli("snapshot", "save", str(tmp_path / "b.kvb"), "--servers",
                     f"127.0.0.1:{free_base_port(1)}", "--timeout", "0.5")  # fmt: skip
    assert_one_line_error(result, EXIT_UNAVAILABLE, "cluster unavailable")
    assert not list(tmp_path.iterdir())
