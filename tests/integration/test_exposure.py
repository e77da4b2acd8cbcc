"""Authentication off is for loopback: elsewhere only with --insecure, and loudly."""

from __future__ import annotations

import json

import pytest

from tests.support.auth import ENVIRON, KEYS_ENV
from tests.support.process import run_cli, serving
from tokenwire.cli import check_exposure, is_loopback
from tokenwire.settings import ConfigError, load_settings


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com", ""])
def test_other_addresses_are_not(host: str) -> None:
    assert not is_loopback(host)


def test_auth_off_on_a_public_address_needs_insecure() -> None:
    settings = load_settings(None, {"server": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="--insecure"):
        check_exposure(settings, insecure=False)
    check_exposure(settings, insecure=True)
    authenticated = load_settings(None, {"server": {"host": "0.0.0.0"}, "auth": {"mode": "jwt"}})
    check_exposure(authenticated, insecure=False)


async def test_serve_refuses_to_listen_openly_without_auth() -> None:
    status, output = await run_cli("serve", "--provider", "simulated", "--host", "0.0.0.0")
    assert status == 2
    assert "auth.mode is 'none'" in output
    assert "--insecure" in output
    assert "serving" not in output


async def test_insecure_serves_and_says_so_loudly() -> None:
    async with serving("--provider", "simulated", "--host", "0.0.0.0", "--insecure") as served:
        records = [json.loads(line) for line in served.lines if line.startswith("{")]
    warnings = [r for r in records if r["level"] == "warning"]
    assert any("AUTHENTICATION IS OFF" in r["event"] for r in warnings)
    assert served.url.startswith("http://0.0.0.0:")


async def test_api_keys_on_a_public_address_need_no_flag() -> None:
    env = {
        **ENVIRON,
        "TOKENWIRE_AUTH__MODE": "api_key",
        "TOKENWIRE_AUTH__API_KEYS_ENV": KEYS_ENV,
    }
    async with serving("--provider", "simulated", "--host", "0.0.0.0", env=env) as served:
        record = json.loads(served.lines[-1])
    assert record["auth"] == "api_key"


async def test_a_missing_key_variable_stops_start_up_naming_it() -> None:
    env = {"TOKENWIRE_AUTH__MODE": "api_key", "TOKENWIRE_AUTH__API_KEYS_ENV": "NOT_SET_ANYWHERE"}
    status, output = await run_cli("serve", "--provider", "simulated", env=env)
    assert status == 2
    assert "NOT_SET_ANYWHERE" in output
    assert "serving" not in output
