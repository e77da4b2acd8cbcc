"""The Makefile's `run` and `conformance`, as a new user types them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.server import free_port

ROOT = Path(__file__).parents[2]
# Use the environment these tests run in; never install anything.
SAME_VENV = ("-o", "install", "-o", "dev", f"VENV={sys.prefix}")


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without what an enclosing `make test` passes down to
    a make it runs (its command-line variables and flags)."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    return {**inherited, **extra}


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *SAME_VENV, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(**(env or {})),
    )


def serve_command(*args: str, env: dict[str, str] | None = None) -> str:
    """The `tokenwire serve` command line that `make run ARGS` would run."""
    printed = make("--dry-run", "run", *args, env=env)
    assert printed.returncode == 0, printed.stderr
    return next(line for line in printed.stdout.splitlines() if "tokenwire serve" in line)


def test_make_run_passes_no_flag_of_its_own() -> None:
    command = serve_command()

    assert command.split()[1:] == ["serve"]


def test_make_run_passes_host_port_and_config_given_on_its_command_line() -> None:
    command = serve_command("HOST=0.0.0.0", "PORT=9001", "CONFIG=my config.toml")

    assert command.endswith("serve --host '0.0.0.0' --port '9001' --config 'my config.toml'")


def test_make_run_ignores_host_and_port_that_a_shell_exports() -> None:
    command = serve_command(env={"HOST": "somebox.example", "PORT": "5000"})

    assert "--host" not in command
    assert "--port" not in command


def test_make_run_honours_the_environment_and_the_config_file(tmp_path: Path) -> None:
    port_in_file, port_in_environment = free_port(), free_port()
    config = tmp_path / "tokenwire.toml"
    config.write_text(
        f'[server]\nport = {port_in_file}\n[[providers]]\nname = "s"\nkind = "simulated"\n'
    )
    proc = subprocess.Popen(
        ["make", "--no-print-directory", *SAME_VENV, "run", f"CONFIG={config}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=environment(TOKENWIRE_SERVER__PORT=str(port_in_environment)),
    )
    try:
        url = f"http://127.0.0.1:{port_in_environment}"
        providers = None
        deadline = time.monotonic() + 60
        while providers is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                providers = httpx.get(url + "/api/providers", timeout=5).json()["providers"]
            except httpx.TransportError:
                time.sleep(0.1)
        assert providers is not None, f"nothing answered at {url} (make exited: {proc.poll()})"
        assert [p["name"] for p in providers] == ["s"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_make_conformance_without_the_suite_says_what_it_needs() -> None:
    result = make("conformance", "CONFORMANCE=/nonexistent/conformance")

    assert result.returncode != 0
    assert "no conformance suite at /nonexistent/conformance" in result.stderr
    assert "make conformance CONFORMANCE=/path/to/conformance" in result.stderr
    assert f"TOKENWIRE_ROOT={ROOT}" in result.stderr
    assert "TOKENWIRE_URL" in result.stderr
