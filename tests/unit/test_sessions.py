"""Sessions: states, the per-user index, idle detection, bounded preferences."""

import time

import pytest

from tokenwire.core.sessions import MAX_PREFERENCE_KEYS, SessionRegistry, SessionState
from tokenwire.protocol.errors import InvalidMessage


def test_sessions_are_indexed_by_user_and_removed_cleanly() -> None:
    registry = SessionRegistry()
    a = registry.open("ada", {})
    b = registry.open("ada", {})
    registry.open("bob", {})
    assert {s.session_id for s in registry.of_user("ada")} == {a.session_id, b.session_id}
    assert registry.user_count == 2
    registry.remove(a.session_id)
    registry.remove(b.session_id)
    assert registry.of_user("ada") == []
    assert registry.user_count == 1
    assert a.state is SessionState.DISCONNECTED
    assert registry.total_opened == 3


def test_state_follows_requests() -> None:
    session = SessionRegistry().open("ada", {})
    session.state = SessionState.CONNECTED
    session.follow("r1")
    session.follow("r2")
    assert session.state is SessionState.PROCESSING
    session.unfollow("r1")
    assert session.state is SessionState.PROCESSING
    session.unfollow("r2")
    assert session.state is SessionState.IDLE


def test_idle_sessions_are_those_quiet_and_with_nothing_running() -> None:
    registry = SessionRegistry()
    quiet = registry.open("a", {})
    busy = registry.open("b", {})
    fresh = registry.open("c", {})
    busy.follow("r")
    long_ago = time.monotonic() - 100
    quiet.last_activity = busy.last_activity = long_ago
    assert registry.idle_since(50) == [quiet]
    assert fresh not in registry.idle_since(50)


def test_preferences_merge_but_stay_bounded() -> None:
    session = SessionRegistry().open("ada", {"language": "en"})
    assert session.update_preferences({"language": "de", "tone": "dry"}) == {
        "language": "de",
        "tone": "dry",
    }
    with pytest.raises(InvalidMessage):
        session.update_preferences({f"k{n}": n for n in range(MAX_PREFERENCE_KEYS)})
    with pytest.raises(InvalidMessage):
        session.update_preferences({"blob": "x" * 20_000})
    assert session.preferences == {"language": "de", "tone": "dry"}
