"""The command line's own answers: its version, and configuration errors that say where
they come from."""

from __future__ import annotations

from importlib.metadata import version

from tests.support.process import run_cli


async def test_version_prints_the_installed_package_s_version() -> None:
    status, output = await run_cli("--version")

    assert status == 0
    assert output.strip() == f"tokenwire {version('tokenwire')}"
