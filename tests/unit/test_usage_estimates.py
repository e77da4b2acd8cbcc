"""Usage where a provider reported none: never above what the answer really used."""

from __future__ import annotations

import pytest

from tokenwire.core.provider import estimate_tokens, estimated_completion_tokens


@pytest.mark.parametrize(
    ("deltas", "max_tokens", "expected", "why"),
    [
        ([" capital"] * 24, 24, 24, "a token a delta: the deltas, not 48 from the characters"),
        ([" capital"] * 30, 24, 24, "never above max_tokens, whatever the deltas"),
        (list("Paris is big"), None, 3, "a character a delta: a quarter of the characters"),
        (["Paris"], None, 1, "one delta is at least one token"),
        ([], 10, 0, "no text, no tokens"),
    ],
)
def test_an_estimate_is_the_least_of_deltas_characters_and_max_tokens(
    deltas: list[str], max_tokens: int | None, expected: int, why: str
) -> None:
    text = "".join(deltas)
    estimate = estimated_completion_tokens(len(deltas), max_tokens, text)
    assert estimate == expected, why
    assert estimate <= min(len(deltas), estimate_tokens(text))


def test_without_the_text_the_deltas_bounded_by_max_tokens() -> None:
    assert estimated_completion_tokens(10, 4) == 4
    assert estimated_completion_tokens(3, None) == 3
