"""A session's preferences as a client may set them: typed, and bounded in size.

Known keys have known types. Any other key may hold a scalar (a string of at
most 1,024 characters, a finite number, a boolean, null) or one small object of
such scalars, so that a client can keep its own settings here without growing
the server's memory or handing the stats endpoints something they cannot encode.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

MAX_KEYS = 64
MAX_OBJECT_KEYS = 16
MAX_STRING_CHARS = 1024
SAFE_INTEGER = 2**53

_KEY = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8}){0,4}")


def _is_scalar(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -SAFE_INTEGER <= value <= SAFE_INTEGER
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_STRING_CHARS


def _check_value(key: str, value: object) -> None:
    if _is_scalar(value):
        return
    if isinstance(value, dict):
        if len(value) > MAX_OBJECT_KEYS:
            raise ValueError(f"{key}: an object of at most {MAX_OBJECT_KEYS} keys")
        for inner, item in value.items():
            if not _KEY.fullmatch(inner):
                raise ValueError(f"{key}: keys are 1-64 letters, digits or . _ : -")
            if not _is_scalar(item):
                raise ValueError(f"{key}.{inner}: expected a string, number, boolean or null")
        return
    raise ValueError(
        f"{key}: expected a string (at most {MAX_STRING_CHARS} characters), a number, "
        "a boolean, null or a small object of these"
    )


def _check_preferences(preferences: dict[str, Any]) -> dict[str, Any]:
    for key, value in preferences.items():
        if not _KEY.fullmatch(key):
            raise ValueError("keys are 1-64 letters, digits or . _ : -")
        _check_value(key, value)
    language = preferences.get("language")
    if language is not None and not (isinstance(language, str) and _LANGUAGE.fullmatch(language)):
        raise ValueError("language: expected a language tag such as 'en' or 'pt-BR'")
    model = preferences.get("model_preference")
    if model is not None and not (isinstance(model, str) and len(model) <= 256):
        raise ValueError("model_preference: expected a model name (at most 256 characters)")
    return preferences


Preferences = Annotated[
    dict[str, Any],
    Field(max_length=MAX_KEYS),
    AfterValidator(_check_preferences),
]


def initial_preferences(language: str | None, model_preference: str | None) -> dict[str, Any]:
    """A new session's preferences from its query string; values that would be refused in
    `update_preferences` fall back to the defaults."""
    if language is None or not _LANGUAGE.fullmatch(language):
        language = "en"
    if model_preference is not None and len(model_preference) > 256:
        model_preference = None
    return {"model_preference": model_preference, "language": language}
