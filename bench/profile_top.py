"""Where the time goes, from py-spy's collapsed stacks (``py-spy record --format raw``).

    python -m bench.profile_top PROFILE.txt [--top 30] [--match service/]

Prints the frames with the largest inclusive share of samples (a frame counted once per stack)
and the largest self share (the innermost frame of a stack).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/wt-bench/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarise(path: Path, *, top: int, match: str | None) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if total == 0:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} samples", "", "inclusive:"]
    for frame, n in inclusive.most_common():
        if match and match not in frame:
            continue
        out.append(f"  {100 * n / total:5.1f}%  {frame}")
        if len(out) > top + 3:
            break
    out += ["", "self:"]
    for frame, n in own.most_common(top):
        out.append(f"  {100 * n / total:5.1f}%  {frame}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--match", help="only frames whose text contains this (inclusive list)")
    a = p.parse_args()
    print(summarise(a.profile, top=a.top, match=a.match))


if __name__ == "__main__":
    main()
