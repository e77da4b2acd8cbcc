"""Credentials for tests: settings for each auth mode, and tokens minted on the spot."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt

from tests.support.server import simulated_settings
from tokenwire.settings import Settings

SECRET = "a-test-secret-that-is-long-enough-for-hs256!"
SECRET_ENV = "TOKENWIRE_TEST_JWT_SECRET"
KEYS_ENV = "TOKENWIRE_TEST_API_KEYS"
API_KEYS = {
    "tw-key-ada-0123456789abcdef": "ada",
    "tw-key-bob-0123456789abcdef": "bob",
    "tw-key-root-0123456789abcdef": "root",
}
ADA_KEY, BOB_KEY, ROOT_KEY = API_KEYS
ENVIRON = {SECRET_ENV: SECRET, KEYS_ENV: json.dumps(API_KEYS)}


def api_key_settings(**tables: Any) -> Settings:
    """api_key mode over `API_KEYS`; `root` is the admin."""
    auth = {"mode": "api_key", "api_keys_env": KEYS_ENV, "admin_users": ["root"]}
    auth.update(tables.pop("auth", {}))
    return simulated_settings(auth=auth, **tables)


def jwt_settings(**tables: Any) -> Settings:
    """jwt mode with the HS256 `SECRET`; `root` is the admin."""
    auth = {"mode": "jwt", "jwt_secret_env": SECRET_ENV, "admin_users": ["root"]}
    auth.update(tables.pop("auth", {}))
    return simulated_settings(auth=auth, **tables)


def hs256(sub: str = "ada", *, lifetime: float = 300.0, **claims: Any) -> str:
    """A token signed with `SECRET`, valid for `lifetime` seconds from now."""
    payload: dict[str, Any] = {"sub": sub, "exp": time.time() + lifetime}
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
