"""The access policy's pure decisions, by plain function calls: which origins match."""

from __future__ import annotations

import pytest

from tokenwire.security.access import AccessPolicy, normalized_origins
from tokenwire.security.auth import NoAuthenticator


@pytest.mark.parametrize("configured", ["https://app.example.com", "HTTPS://App.Example.com/"])
@pytest.mark.parametrize("presented", ["https://app.example.com", "https://APP.example.com/"])
def test_an_allowed_origin_matches_whatever_the_case_or_trailing_slash_on_either_side(
    configured: str, presented: str
) -> None:
    policy = AccessPolicy(NoAuthenticator(), allowed_origins=normalized_origins([configured]))
    assert policy.origin_allowed(presented, host=None)
