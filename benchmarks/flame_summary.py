"""The functions with the most samples of their own in py-spy flame graphs (SVG).

py-spy's SVGs carry each frame's sample count (``fg:x``, ``fg:w``) and depth
(``y``); a frame's own samples are its count less its children's. Prints, per
file, the top functions by own samples and the share of a few groups (the
storage thread's SQLite commit, msgpack encode/decode, the event loop's own
machinery), which ``benchmarks/results/profile.md`` quotes.

    .venv/bin/python benchmarks/flame_summary.py benchmarks/results/profiles/*.svg [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import html
import re
from pathlib import Path

FRAME = re.compile(
    r'<g><title>(?P<title>[^<]*)</title><rect x="[^"]*" y="(?P<y>\d+)"[^>]*'
    r'fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"'
)
# Groups of frames whose inclusive samples are reported, by a substring of the title.
GROUPS = {
    "sqlite commit (storage thread)": "SqliteStorage.save",
    "msgpack pack (encode)": "packb",
    "msgpack unpack (decode)": "unpack (kvraft/rpc/codec.py",
    "Ready loop (_perform)": "RaftNode._perform",
    "apply (RSM.apply)": "RSM.apply",
    "sending (Coalescer.write)": "Coalescer.write",
    "ticker": "RaftNode._ticker",
    "thread hand-off (executor submit/set_result)": "ThreadPoolExecutor.submit",
}


def frames(path: Path) -> list[tuple[str, int, int, int]]:
    text = path.read_text()
    return [
        (html.unescape(m["title"]), int(m["y"]), int(m["x"]), int(m["w"]))
        for m in FRAME.finditer(text)
    ]


def summary(path: Path, top: int) -> str:
    found = frames(path)
    total = max((w for title, _, _, w in found if title.startswith("all ")), default=0)
    by_depth: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for _, y, x, w in found:
        by_depth[y].append((x, w))
    steps = sorted(by_depth)
    step = steps[1] - steps[0] if len(steps) > 1 else 16
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for title, y, x, w in found:
        children = sum(cw for cx, cw in by_depth.get(y + step, []) if x <= cx < x + w)
        name = title.rsplit(" (", 1)[0]  # drop "(N samples, P%)"
        own[name] += w - children
        for group, needle in GROUPS.items():
            if needle in title:
                inclusive[group] = max(inclusive[group], w)
    lines = [f"== {path.name}: {total} samples"]
    for name, samples in own.most_common(top):
        lines.append(f"  {100 * samples / total:5.1f}%  {name}")
    lines.append("  groups (inclusive):")
    for group in GROUPS:
        lines.append(f"  {100 * inclusive[group] / total:5.1f}%  {group}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("svgs", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.svgs:
        print(summary(path, args.top))


if __name__ == "__main__":
    main()
