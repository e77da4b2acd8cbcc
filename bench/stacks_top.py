"""The functions a py-spy profile spends its samples in, as shares of the busy samples.

    python bench/stacks_top.py bench/results/profiles/STAMP-chat-100-over-1-s.txt [--match RE]

Reads py-spy's `--format raw` output (collapsed stacks: `frame;frame;... count`), drops the
samples of threads that only wait (an idle thread pool's worker, the event loop in `select`,
which py-spy counts as busy), and prints the top functions by their own samples and by the
samples of everything they call (`--match` keeps the lines whose name matches).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# py-spy samples these as busy although they wait
IDLE_LEAVES = ("_worker (concurrent", "select (selectors", "Runner.run (asyncio")
_FRAME = re.compile(r"(.*) \((.*?):\d+\)")


def short(frame: str) -> str:
    """`func (/long/path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    found = _FRAME.match(frame)
    if not found:
        return frame
    path = re.sub(r".*/(site-packages|src|lib/python3\.\d+)/", "", found.group(2))
    return f"{found.group(1)} ({path})"


def tally(lines: list[str]) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [short(f) for f in stack.split(";")]
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            under[name] += int(count)
    return total, own, under


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--match", default="", help="regular expression on the function's line")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    total, own, under = tally(args.profile.read_text().splitlines())
    print(f"busy samples: {total}")
    print("-- own samples")
    for name, count in own.most_common(args.top):
        print(f"{100 * count / max(total, 1):5.1f}% {name}")
    print("-- with what they call")
    shown = [(n, c) for n, c in under.most_common() if re.search(args.match, n)][: args.top * 2]
    for name, count in shown:
        print(f"{100 * count / max(total, 1):5.1f}% {name}")


if __name__ == "__main__":
    main()
