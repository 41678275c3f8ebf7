"""The metric names docs/metrics.md documents, so tests hold the code and the docs together."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
# Series a documented histogram (or a kept counter) adds to its name.
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def documented_metrics() -> set[str]:
    """The ``kvraft_*`` names in the first column of docs/metrics.md's table."""
    names = set()
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\| `(kvraft_[a-z_]+)` \|", line)
        if match:
            names.add(match.group(1))
    return names


def documented_name_of(sample: str, documented: set[str]) -> str | None:
    """The documented metric a sample name belongs to (``X_bucket`` to ``X``), or None."""
    if sample in documented:
        return sample
    for suffix in SUFFIXES:
        if sample.endswith(suffix) and sample[: -len(suffix)] in documented:
            return sample[: -len(suffix)]
    return None
