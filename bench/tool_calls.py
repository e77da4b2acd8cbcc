"""What the tool-call assembler adds per fragment, in one process (a benchmark).

An answer of `--calls` parallel calls whose arguments arrive as `--fragments`
fragments in all (each `--chars` characters), interleaved one fragment per call
in turn as an upstream with parallel calls sends them, each call's name on its
first fragment and repeated on every one (the worst case of FACTS.md's quirks),
then each call's end. Prints the process CPU per fragment of feeding them all to
a fresh `ToolCallAssembler` (the arguments' JSON checked at each end included),
less the same loop with no assembler: best and median of `--repeat` runs.

    .venv/bin/python bench/tool_calls.py
    .venv/bin/python bench/tool_calls.py --fragments 100000 --calls 8 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import time

from tokenwire.core.tool_calls import ToolCallAssembler
from tokenwire.core.tools import ToolCallDelta, ToolCallEnd


def answer(calls: int, fragments: int, chars: int) -> list[ToolCallDelta | ToolCallEnd]:
    """The provider's events for `calls` calls of `fragments // calls` fragments each."""
    per_call = max(1, fragments // calls)
    body = "x" * (chars * per_call - len('{"data": ""}'))
    texts = ['{"data": "' + body + '"}' for _ in range(calls)]
    events: list[ToolCallDelta | ToolCallEnd] = []
    for turn in range(per_call):
        for call, text in enumerate(texts):
            piece = text[turn * chars : (turn + 1) * chars]
            if turn == per_call - 1:
                piece = text[turn * chars :]
            events.append(ToolCallDelta(call, upstream_id=f"up_{call}", name="f", arguments=piece))
    events.extend(ToolCallEnd(call) for call in range(calls))
    return events


def assemble(events: list[ToolCallDelta | ToolCallEnd]) -> float:
    started = time.process_time()
    calls = ToolCallAssembler()
    feed = calls.feed
    for event in events:
        feed(event)
    calls.finish()
    return time.process_time() - started


def bare_loop(events: list[ToolCallDelta | ToolCallEnd]) -> float:
    started = time.process_time()
    out: list[object] = []
    append = out.append
    for event in events:
        append(event)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fragments", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--chars", type=int, default=8, help="characters per fragment")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    events = answer(args.calls, args.fragments, args.chars)
    fragments = sum(isinstance(e, ToolCallDelta) for e in events)
    costs = [assemble(events) - bare_loop(events) for _ in range(args.repeat)]
    per = [cost / fragments * 1e6 for cost in costs]
    print(
        f"{fragments} fragments across {args.calls} parallel calls, {args.chars} chars each: "
        f"assembler adds {min(per):.2f} us/fragment (best), {statistics.median(per):.2f} (median)"
        f" of {args.repeat} runs"
    )


if __name__ == "__main__":
    main()
