"""The JavaScript clients people use (tests/clients/js), run by Node against a server.

Each script there runs named checks with one client library and prints a JSON line per
check: what the client returned, or the error as the client shaped it. `make clients-js`
installs the pinned packages (a prerequisite of `make test`, as `browser` is).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).parents[1] / "clients" / "js"
INSTALLED = JS / "node_modules" / ".installed"
# Generous: a script starts in well under a second, and each check is a short stream.
SCRIPT_TIMEOUT = 60.0


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("no `node` on PATH: the JavaScript client tests need Node 20 and npm")
    if not INSTALLED.exists():
        pytest.fail(f"the JavaScript clients are not installed in {JS}: `make clients-js`")
    return found


async def run_checks(
    script: str, base_url: str, model: str, *checks: str
) -> dict[str, dict[str, Any]]:
    """Run `checks` of `script` (e.g. "openai_node.mjs") in one Node process, in order;
    each check's line by name: `{"ok": true, "result": ...}` or `{"ok": false, "error":
    {"name", "status", "message", "body"}}`."""
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(JS / script),
        base_url,
        model,
        *checks,
        cwd=JS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCRIPT_TIMEOUT)
    finally:
        if proc.returncode is None:  # timed out or cancelled: the script must not outlive us
            proc.kill()
            await proc.wait()
    lines = [json.loads(text) for text in out.decode().splitlines() if text.startswith("{")]
    by_check = {line["check"]: line for line in lines}
    missing = [c for c in checks if c not in by_check]
    said = f"node {script} exited {proc.returncode}, no line for {missing}:\n{err.decode()}"
    assert proc.returncode == 0, said
    assert not missing, said
    return by_check


def passed(line: dict[str, Any]) -> Any:
    """The result of a check that must have succeeded; its error otherwise."""
    assert line["ok"], f"{line['check']} failed: {json.dumps(line['error'], indent=1)}"
    return line["result"]


def failed(line: dict[str, Any]) -> dict[str, Any]:
    """The error of a check that must have failed."""
    assert not line["ok"], f"{line['check']} succeeded: {json.dumps(line['result'])}"
    error: dict[str, Any] = line["error"]
    return error


async def check(script: str, base_url: str, model: str, name: str) -> dict[str, Any]:
    """One check's line."""
    return (await run_checks(script, base_url, model, name))[name]
