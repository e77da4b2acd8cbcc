"""The command line's own answers: its version, and configuration errors that say where
they come from."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from tests.support.process import run_cli


async def test_version_prints_the_installed_package_s_version() -> None:
    status, output = await run_cli("--version")

    assert status == 0
    assert output.strip() == f"tokenwire {version('tokenwire')}"


async def test_a_wrong_variable_value_is_one_line_naming_the_variable() -> None:
    status, output = await run_cli(
        "serve", "--provider", "simulated", env={"TOKENWIRE_SERVER__PORT": "abc"}
    )

    assert status == 2
    assert output.strip() == (
        "tokenwire: configuration error: TOKENWIRE_SERVER__PORT: server.port: expected an integer"
    )


async def test_a_misspelt_table_is_one_line_naming_the_file_line_and_the_table_meant(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tokenwire.toml"
    config.write_text('[[provider]]\nname = "a"\nkind = "simulated"\n')

    status, output = await run_cli("serve", "--config", str(config))

    assert status == 2
    assert output.strip() == (
        f"tokenwire: configuration error: {config}:1: provider: unknown table; "
        "did you mean 'providers'?"
    )
