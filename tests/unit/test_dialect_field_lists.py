"""Every request field of the official APIs, as the installed SDKs define them, is
declared by the dialect's body model (so it is taken, ignored or refused with why,
never an `unknown key`) and has its row in docs/http-apis.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import message_create_params
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params
from pydantic import BaseModel

from tokenwire.transports.v1.chat import ChatCompletionRequest
from tokenwire.transports.v1.messages import MessagesRequest
from tokenwire.transports.v1.responses import ResponseCreateRequest

DOCS = Path(__file__).parents[2] / "docs" / "http-apis.md"

DIALECTS = [
    (completion_create_params.CompletionCreateParamsStreaming, ChatCompletionRequest, "Chat"),
    (response_create_params.ResponseCreateParamsStreaming, ResponseCreateRequest, "Responses"),
    (message_create_params.MessageCreateParamsStreaming, MessagesRequest, "Messages"),
]
# The Messages API takes these though SDK 2.14 dropped its arguments for them.
MESSAGES_SAMPLING = {"temperature", "top_p", "top_k"}


def official_fields(params: Any) -> set[str]:
    fields: set[str] = set()
    for klass in params.__mro__:
        fields |= set(getattr(klass, "__annotations__", {}))
    return fields


def docs_section(title: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"### {title}")
    end = text.find("\n### ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.mark.parametrize(("params", "model", "title"), DIALECTS, ids=[d[2] for d in DIALECTS])
def test_every_official_field_is_declared_by_the_dialect(
    params: Any, model: type[BaseModel], title: str
) -> None:
    missing = official_fields(params) - set(model.model_fields)
    assert not missing, f"{title}: fields the SDK defines and the dialect does not: {missing}"


@pytest.mark.parametrize(("params", "model", "title"), DIALECTS, ids=[d[2] for d in DIALECTS])
def test_every_declared_field_has_a_row_in_the_docs(
    params: Any, model: type[BaseModel], title: str
) -> None:
    documented = set(re.findall(r"`([a-z_]+)[`.]", docs_section(title)))
    fields = official_fields(params) | (MESSAGES_SAMPLING if title == "Messages" else set())
    undocumented = fields - documented
    assert not undocumented, f"{title}: fields without a row in http-apis.md: {undocumented}"
