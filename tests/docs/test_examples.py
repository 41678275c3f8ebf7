"""The Python examples in the README and docs/ run, as written, against a real cluster.

Every fenced ``python`` block of ``README.md`` and ``docs/*.md`` is one test,
with the id ``FILE:LINE`` (the line of its opening fence). Each runs as a
script in its own interpreter, against a fresh 3-node cluster of real server
processes (``make_cluster``), the way a reader pastes it into a file.

The examples address the local cluster that ``make run`` starts
(127.0.0.1:7001..7003). The test does not take those ports: it substitutes the
test cluster's own addresses for them in the block's text (7001 -> the first
server, and so on; any other local 70xx address is an error), so the test
never collides with a cluster someone is running, and sets
``$KVRAFT_SERVERS`` to the same addresses. Substitution keeps every line
where it was and the script starts with blank lines up to the fence, so a
traceback's line numbers are the Markdown file's.

A block that is not meant to run says so, with its reason, on the line just
before its fence::

    <!-- not run: needs a cluster of five -->
    ```python

A marker without a reason, or one that is not directly above a ``python``
fence, is reported by :func:`test_docs_parse_cleanly`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster_fixtures import ClusterFactory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TIMEOUT_S = 120.0
PYTHON_INFO = {"python", "py", "python3"}
LOCAL_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost):(70\d\d)\b")
LOCAL_PORTS = (7001, 7002, 7003)
FENCE = re.compile(r"^\s{0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
MARKER = re.compile(r"^\s*<!--\s*not[\s_-]*run\b\s*:?\s*(?P<reason>.*?)\s*-->\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One fenced python block: where it is, its text, and why it is not run (if it is not)."""

    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    source: str
    skip_reason: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def extract(text: str, path: str) -> tuple[list[Block], list[str]]:
    """The python blocks of one Markdown text, and the problems found on the way."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    markers: dict[int, str] = {}  # 0-based line of a marker -> its reason
    for n, line in enumerate(lines):
        marker = MARKER.match(line)
        if marker:
            if not marker["reason"]:
                problems.append(f"{path}:{n + 1}: 'not run' marker without a reason")
            markers[n] = marker["reason"]
    used: set[int] = set()
    n = 0
    while n < len(lines):
        opening = FENCE.match(lines[n])
        if not opening:
            n += 1
            continue
        fence = opening["fence"]
        closing = re.compile(rf"^\s{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((k for k in range(n + 1, len(lines)) if closing.match(lines[k])), None)
        if end is None:
            problems.append(f"{path}:{n + 1}: code block never closed")
            end = len(lines)
        words = opening["info"].split()
        if words and words[0].lower() in PYTHON_INFO:
            reason = markers.get(n - 1)
            if reason is not None:
                used.add(n - 1)
            source = "\n".join(lines[n + 1 : end]) + "\n"
            blocks.append(Block(path, n + 1, source, reason))
        n = end + 1
    for k in sorted(set(markers) - used):
        problems.append(f"{path}:{k + 1}: 'not run' marker not directly above a python block")
    return blocks, problems


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def collect() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for doc in documents():
        found, trouble = extract(doc.read_text(), str(doc.relative_to(ROOT)))
        blocks += found
        problems += trouble
    return blocks, problems


BLOCKS, PROBLEMS = collect()


def substitute(source: str, addresses: Sequence[str]) -> str:
    """The block with the local cluster's addresses replaced by ``addresses``, line for line."""

    def replace(match: re.Match[str]) -> str:
        port = int(match[1])
        if port not in LOCAL_PORTS[: len(addresses)]:
            raise ValueError(f"{match[0]} is not one of the {len(addresses)} local servers")
        return addresses[LOCAL_PORTS.index(port)]

    return LOCAL_ADDRESS.sub(replace, source)


def run_block(
    block: Block, addresses: Sequence[str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """Run the block as a script whose line numbers are those of its Markdown file."""
    script = workdir / f"{Path(block.path).name}.py"
    script.write_text("\n" * block.line + substitute(block.source, addresses))
    env = dict(os.environ, KVRAFT_SERVERS=",".join(addresses))
    try:
        return subprocess.run(
            [sys.executable, str(script)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stderr if isinstance(exc.stderr, str) else ""
        pytest.fail(f"{block.id}: still running after {EXAMPLE_TIMEOUT_S:g} s\n{output}")


def failure(result: subprocess.CompletedProcess[str]) -> str | None:
    """Why a block's run counts as failed, or None: it exited 0 and printed no traceback."""
    if result.returncode != 0:
        return f"exit status {result.returncode}"
    if "Traceback" in result.stderr:
        return "a traceback on stderr"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example(block: Block, make_cluster: ClusterFactory, tmp_path: Path) -> None:
    """The block runs to completion against a 3-node cluster of real servers."""
    if block.skip_reason is not None:
        pytest.skip(f"not run: {block.skip_reason}")
    cluster = make_cluster(3)

    result = run_block(block, cluster.addresses, tmp_path)

    why = failure(result)
    assert why is None, (
        f"{block.id} failed ({why}; line numbers are {block.path}'s):\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


def test_docs_parse_cleanly() -> None:
    """Every marker gives a reason and sits on a python block; every fence closes."""
    assert PROBLEMS == []


# A block that needs a cluster this file cannot start names the test that runs it.
RUN_ELSEWHERE = ("tests/cluster/test_secured_cluster.py",)


def run_elsewhere(block: Block) -> bool:
    return block.skip_reason is not None and any(t in block.skip_reason for t in RUN_ELSEWHERE)


def test_readme_runs_the_public_api() -> None:
    """The README's examples use Client, AsyncClient and Lock; each runs here or in a named test."""
    readme = [b for b in BLOCKS if b.path == "README.md"]
    assert all(b.skip_reason is None or run_elsewhere(b) for b in readme)
    text = "".join(b.source for b in readme)
    for call in (r"\bfrom kvraft import\b", r"\bClient\(", r"\bAsyncClient\(", r"\bLock\("):
        assert re.search(call, text), call


# ------------------------------------------------------------- the extractor


SAMPLE = """\
# Title

```sh
kvraft get k
```

```python
print("one")
```

<!-- not run: needs five servers -->
```python
print("two")
```

````python
```
print("three")
````
"""


def test_extract_finds_python_blocks_with_their_lines_and_markers() -> None:
    blocks, problems = extract(SAMPLE, "doc.md")

    assert problems == []
    assert [(b.line, b.source, b.skip_reason) for b in blocks] == [
        (7, 'print("one")\n', None),
        (12, 'print("two")\n', "needs five servers"),
        (16, '```\nprint("three")\n', None),
    ]
    assert blocks[0].id == "doc.md:7"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "<!-- not run -->\n```python\nx = 1\n```\n",
            "doc.md:1: 'not run' marker without a reason",
        ),
        ("<!-- not run: later -->\n\n```python\nx = 1\n```\n", "doc.md:1: 'not run' marker not"),
        ("<!-- not run: sh -->\n```sh\nls\n```\n", "doc.md:1: 'not run' marker not"),
        ("```python\nx = 1\n", "doc.md:1: code block never closed"),
    ],
)
def test_extract_reports_bad_markers_and_fences(text: str, problem: str) -> None:
    _, problems = extract(text, "doc.md")

    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_substitute_maps_local_ports_to_the_cluster_line_for_line() -> None:
    source = 'Client(["127.0.0.1:7001", "127.0.0.1:7002",\n        "localhost:7003"])\n'

    out = substitute(source, ["h:1", "h:2", "h:3"])

    assert out == 'Client(["h:1", "h:2",\n        "h:3"])\n'
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:7004"):
        substitute('"127.0.0.1:7004"', ["h:1", "h:2", "h:3"])


def test_a_broken_example_fails_with_the_markdown_line(tmp_path: Path) -> None:
    """A block that raises fails the check, and its traceback points into the doc."""
    block = Block("docs/guide.md", 40, 'x = 1\nraise RuntimeError("broken example")\n')

    result = run_block(block, ["127.0.0.1:1"], tmp_path)

    assert failure(result) == "exit status 1"
    assert 'guide.md.py", line 42' in result.stderr
    assert "broken example" in result.stderr
