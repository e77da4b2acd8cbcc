"""Two revisions of tokenwire under the same WebSocket load, in one run (a benchmark).

Checks each revision out into a temporary git worktree, serves it with this
checkout's virtual environment (the revision's `src/` first on `sys.path`), and
measures it with `ws_load.py`, alternating the revisions run by run so that
drift in the machine's load spreads over both. Prints, per revision and N,
the median delivered tokens/s and server CPU per token, then the change.

    .venv/bin/python bench/before_after.py --before cd1de97 --after HEAD
    .venv/bin/python bench/before_after.py --before cd1de97 --after WORKTREE \\
        --clients 100 --tokens 2000 --repeat 5

`--after WORKTREE` (the default) measures the files as they are, uncommitted
changes included. Every other option is `ws_load.py`'s (see bench/README.md).

Timings on a shared machine spread widely (consecutive runs of one revision
differ by 20% here), so `--instructions` also counts what does not depend on
the machine's other load: each revision's server runs under valgrind's
callgrind for N clients x 100 tokens and x (100 + --tokens) tokens, and the
difference of the two totals over the extra tokens is the server's
instructions per delivered token, start-up and per-request costs cancelled out.

    .venv/bin/python bench/before_after.py --before cd1de97 --instructions \
        --clients 10 --tokens 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ws_load

ROOT = ws_load.ROOT
WORKTREE = "WORKTREE"


def server_cmd(src: Path) -> str:
    """Serve the tokenwire in `src` with this checkout's interpreter and packages."""
    code = (
        f"import sys; sys.path.insert(0, {str(src)!r}); "
        "from tokenwire.cli import main; sys.exit(main())"
    )
    python = ROOT / ".venv" / "bin" / "python"
    return (
        f"{shlex.quote(str(python))} -c {shlex.quote(code)} serve --provider simulated "
        "--host 127.0.0.1 --port {port}"
    )


@contextlib.contextmanager
def checked_out(rev: str) -> Iterator[Path]:
    """The `src/` directory of `rev` (the live one for WORKTREE)."""
    if rev == WORKTREE:
        yield ROOT / "src"
        return
    where = Path(tempfile.mkdtemp(prefix="tokenwire-rev-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield where / "src"
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
            check=False,
            capture_output=True,
        )


def describe(rev: str) -> str:
    if rev == WORKTREE:
        return "worktree"
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


async def compare(args: argparse.Namespace, sources: dict[str, Path]) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-bench-"))
    runs: dict[tuple[str, int], list[ws_load.RunResult]] = {}
    print(f"{'revision':>10} " + ws_load.header(), flush=True)
    for _ in range(args.repeat):
        for name, src in sources.items():
            for n in args.clients:
                run_args = argparse.Namespace(**{**vars(args), "server_cmd": server_cmd(src)})
                result = await ws_load.measure(run_args, n, log_dir)
                runs.setdefault((name, n), []).append(result)
                print(f"{name:>10} " + ws_load.row(result), flush=True)
                await asyncio.sleep(args.pause_s)
    print(f"\n# medians of {args.repeat} runs each, revisions alternated")
    print(f"{'revision':>10} {'N':>6} {'tokens/s':>10} {'srv us/token':>13} {'errors':>7}")
    medians = {key: ws_load.median_result(results) for key, results in runs.items()}
    for (name, n), m in medians.items():
        print(
            f"{name:>10} {n:>6} {m.tokens_per_s:>10,.0f} "
            f"{m.server_cpu_ms_per_1k_tokens or float('nan'):>13.2f} {m.errors:>7}"
        )
    before, after = list(sources)
    print("\n# change, after against before")
    for n in args.clients:
        b, a = medians[(before, n)], medians[(after, n)]
        cpu_b, cpu_a = b.server_cpu_ms_per_1k_tokens, a.server_cpu_ms_per_1k_tokens
        cpu = f"{100 * (cpu_a / cpu_b - 1):+.1f}%" if cpu_a and cpu_b else "n/a"
        rate = f"{100 * (a.tokens_per_s / b.tokens_per_s - 1):+.1f}%" if b.tokens_per_s else "n/a"
        print(f"N={n}: tokens/s {rate}, server CPU per token {cpu}")
    print(f"server logs: {log_dir}", file=sys.stderr)
    return 1 if any(m.errors for m in medians.values()) else 0


async def count_instructions(args: argparse.Namespace, sources: dict[str, Path]) -> int:
    """Server instructions per token of each revision, from two callgrind runs each."""
    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-bench-"))
    n = args.clients[0]
    small, large = 100, 100 + args.tokens
    per_token: dict[str, float] = {}
    for name, src in sources.items():
        totals = []
        for tokens in (small, large):
            out = log_dir / f"{name}-{tokens}.callgrind"
            run_args = argparse.Namespace(
                **{
                    **vars(args),
                    "server_cmd": server_cmd(src),
                    "server_wrapper": f"valgrind --tool=callgrind --callgrind-out-file={out}",
                    "tokens": tokens,
                    "no_warmup": True,
                    "wait_quiet": 0.0,
                    "timeout": 900.0,
                }
            )
            result = await ws_load.measure(run_args, n, log_dir)
            if result.errors:
                print(f"{name}: errors {result.error_samples[:3]}", file=sys.stderr)
                return 1
            totals.append(callgrind_total(out))
        per_token[name] = (totals[1] - totals[0]) / (n * (large - small))
        print(f"{name:>10}: {per_token[name]:,.0f} server instructions per token", flush=True)
    before, after = per_token.values()
    print(f"change, after against before: {100 * (after / before - 1):+.2f}%")
    return 0


def callgrind_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no total in {path}")


def parser() -> argparse.ArgumentParser:
    p = ws_load.parser()
    p.description = __doc__
    p.add_argument("--before", required=True, help="git revision measured first")
    p.add_argument("--after", default=WORKTREE, help="git revision, or WORKTREE (the default)")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count server instructions per token under callgrind (first --clients value)",
    )
    p.set_defaults(clients=[1, 100], repeat=3, tokens=1000, wait_quiet=20.0, quiet_cores=0.3)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.url or args.server_cmd:
        raise SystemExit(
            "before_after.py starts its own servers: --url and --server-cmd do not apply"
        )
    ws_load.raise_fd_limit(max(args.clients))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    info = ws_load.machine()
    print(
        f"# {info['date']}  {info['nproc']} x {info['cpu']}  Python {info['python']}  "
        f"tokens={args.tokens} delay_ms={args.delay_ms:g} granularity={args.granularity}  "
        f"before={describe(args.before)} after={describe(args.after)}",
        flush=True,
    )
    with checked_out(args.before) as before, checked_out(args.after) as after:
        sources = {describe(args.before): before, describe(args.after): after}
        if args.instructions:
            return int(runner(count_instructions(args, sources)))
        return int(runner(compare(args, sources)))


if __name__ == "__main__":
    sys.exit(main())
