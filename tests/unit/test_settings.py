"""Settings: file, then environment, then flags; a wrong file names the key."""

import json
from pathlib import Path
from typing import Any

import pytest

from tokenwire.cli import flag_overrides, parser
from tokenwire.settings import ConfigError, ProviderSettings, Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokenwire.toml"
    path.write_text(text)
    return path


def test_defaults_serve_the_local_model_and_the_simulated_one_by_name_only() -> None:
    settings = load_settings()
    assert [p.name for p in settings.providers] == ["local", "simulated"]
    assert [p.auto for p in settings.providers] == [True, False]
    assert settings.default_provider == "local"
    assert settings.streams.resume_grace_seconds == 10
    assert settings.limits.max_message_bytes == 1024 * 1024


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 9001
[streams]
progress_every = 5
[[providers]]
name = "fast"
kind = "simulated"
strengths = ["code"]
""",
    )
    settings = load_settings(path)
    assert settings.server.port == 9001
    assert settings.streams.progress_every == 5
    assert settings.providers[0].strengths == ["code"]


def test_environment_beats_file_and_flags_beat_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[server]\nport = 9001\nhost = '0.0.0.0'\n")
    monkeypatch.setenv("TOKENWIRE_SERVER__PORT", "9002")
    monkeypatch.setenv("TOKENWIRE_STREAMS__RESUME_GRACE_SECONDS", "0")
    settings = load_settings(path)
    assert settings.server.port == 9002
    assert settings.server.host == "0.0.0.0"
    assert settings.streams.resume_grace_seconds == 0
    flagged = load_settings(path, {"server": {"port": 9003}})
    assert flagged.server.port == 9003
    assert flagged.server.host == "0.0.0.0"


def test_unrelated_tokenwire_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_ROOT", "/somewhere")
    monkeypatch.setenv("TOKENWIRE_URL", "http://x")
    assert load_settings().server.port == 8000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nonsense]\nx = 1\n", "nonsense: unknown table"),
        ("[limits]\nmax_message_bytes = 'big'\n", "limits.max_message_bytes: expected an integer"),
        ("[streams]\nwhatever = 1\n", "streams.whatever: unknown key"),
        ("[[providers]]\nname = 'a'\nkind = 'magic'\n", "providers[0].kind"),
        ("[[providers]]\nkind = 'simulated'\n", "providers[0].name: required key is missing"),
        (
            "[[providers]]\nname='a'\nkind='simulated'\n[[providers]]\nname='a'\nkind='simulated'\n",
            "providers[1].name: duplicate provider name 'a'",
        ),
        (
            "[[providers]]\nname='a'\nkind='openai'\napi_key_env='TW_TEST_NO_SUCH_KEY'\n",
            "providers[0].api_key_env: environment variable TW_TEST_NO_SUCH_KEY is not set",
        ),
        ("[routing]\ndefault_provider = 'ghost'\n", "routing.default_provider"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_a_wrong_file_stops_with_one_message_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert message in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_api_key_is_read_from_the_named_variable_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TW_TEST_KEY", "sk-secret")
    path = write(tmp_path, "[[providers]]\nname='a'\nkind='openai'\napi_key_env='TW_TEST_KEY'\n")
    provider = load_settings(path).providers[0]
    assert provider.api_key() == "sk-secret"
    assert "sk-secret" not in repr(provider)


def simulated_of(settings: Settings) -> ProviderSettings:
    (simulated,) = [p for p in settings.providers if p.kind == "simulated"]
    return simulated


def test_a_simulated_provider_configured_in_a_file_takes_part_in_routing(tmp_path: Path) -> None:
    path = write(tmp_path, "[[providers]]\nname = 'sim'\nkind = 'simulated'\n")
    assert simulated_of(load_settings(path)).auto


def test_a_simulated_provider_configured_in_the_environment_takes_part_in_routing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    providers = [{"name": "local", "kind": "local"}, {"name": "simulated", "kind": "simulated"}]
    monkeypatch.setenv("TOKENWIRE_PROVIDERS", json.dumps(providers))
    assert simulated_of(load_settings()).auto


def test_serve_provider_simulated_takes_part_in_routing() -> None:
    args = parser().parse_args(["serve", "--provider", "simulated"])
    settings = load_settings(None, flag_overrides(args))
    assert simulated_of(settings).auto
    assert settings.default_provider == "simulated"


def test_the_default_provider_is_the_first_that_routing_may_choose(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[providers]]\nname='stand-in'\nkind='simulated'\nauto=false\n"
        "[[providers]]\nname='real'\nkind='simulated'\n",
    )
    assert load_settings(path).default_provider == "real"


def test_a_default_provider_that_routing_may_not_choose_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[routing]\ndefault_provider='a'\n[[providers]]\nname='a'\nkind='simulated'\nauto=false\n",
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "routing.default_provider: provider 'a' has auto = false" in str(refused.value)


# -- where a wrong value came from, and what was meant -------------------------------


def error_of(path: Path | None = None, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, overrides)
    return str(caught.value)


def test_a_wrong_value_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENWIRE_SERVER__PORT", "abc")

    assert error_of() == "TOKENWIRE_SERVER__PORT: server.port: expected an integer"


def test_the_environment_is_named_when_it_overrides_a_good_value_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    monkeypatch.setenv("tokenwire_server__port", "abc")

    assert error_of(path) == "tokenwire_server__port: server.port: expected an integer"


def test_a_wrong_provider_list_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENWIRE_PROVIDERS", '[{"name": "a"}]')

    assert error_of() == "TOKENWIRE_PROVIDERS: providers[0].kind: required key is missing"


def test_a_wrong_value_in_the_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nhost = '127.0.0.1'\nport = 'abc'\n")

    assert error_of(path) == f"{path}:3: server.port: expected an integer"


def test_a_misspelt_table_is_named_with_its_line_and_the_table_meant(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[server]\nport = 9001\n\n[[provider]]\nname = 'a'\nkind = 'simulated'\n"
    )

    assert error_of(path) == f"{path}:4: provider: unknown table; did you mean 'providers'?"


def test_a_misspelt_key_is_named_with_its_line_and_the_key_meant(tmp_path: Path) -> None:
    path = write(tmp_path, "[streams]\nprogress_every = 5\nresume_grace = 3\n")

    assert error_of(path) == (
        f"{path}:3: streams.resume_grace: unknown key; did you mean 'resume_grace_seconds'?"
    )


def test_a_misspelt_required_key_is_reported_as_misspelt_rather_than_missing(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[[providers]]\nname = 'a'\nknd = 'simulated'\n")

    assert error_of(path) == f"{path}:3: providers[0].knd: unknown key; did you mean 'kind'?"


def test_an_unknown_key_far_from_any_known_one_gets_no_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[streams]\nwhatever = 1\n")

    assert error_of(path) == f"{path}:2: streams.whatever: unknown key"


def test_a_missing_key_names_the_header_of_its_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[providers]]\nname = 'a'\nkind = 'simulated'\n\n[[providers]]\nkind = 'simulated'\n",
    )

    assert error_of(path) == f"{path}:5: providers[1].name: required key is missing"


def test_a_check_across_keys_names_the_line_of_the_key_it_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[providers]]\nname = 'a'\nkind = 'simulated'\n[routing]\n"
        "strategy = 'round_robin'\ndefault_provider = 'ghost'\n",
    )

    assert error_of(path) == f"{path}:6: routing.default_provider: no provider is named 'ghost'"


@pytest.mark.parametrize(
    "text",
    ["server.port = 'abc'\n", "server = { port = 'abc' }\n"],
    ids=["dotted key", "inline table"],
)
def test_where_the_line_is_not_certain_only_the_file_is_named(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    assert error_of(path) == f"{path}: server.port: expected an integer"


def test_a_multi_line_string_that_looks_like_a_table_is_not_taken_for_one(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        '[auth]\njwt_audience = """\nnot TOML:\n[server]\nport = 1\n"""\n'
        '\n[server]\nport = "abc"\n',
    )

    assert error_of(path) == f"{path}:9: server.port: expected an integer"


def test_a_wrong_flag_value_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")

    assert error_of(path, {"server": {"port": 70000}}).startswith("server.port: ")


def test_a_misspelt_variable_is_told_the_variable_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_STREAMS__RESUME_GRACE", "0")

    assert error_of() == (
        "TOKENWIRE_STREAMS__RESUME_GRACE: unknown key streams.resume_grace; "
        "did you mean TOKENWIRE_STREAMS__RESUME_GRACE_SECONDS?"
    )


def test_a_variable_of_a_misspelt_table_is_told_the_variable_meant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENWIRE_STREAM__RESUME_GRACE_SECONDS", "0")

    assert error_of().endswith("; did you mean TOKENWIRE_STREAMS__RESUME_GRACE_SECONDS?")
