"""Anthropic Messages (`POST /v1/messages`)."""

from __future__ import annotations

from fastapi import APIRouter

from tokenwire.transports.v1.route import AnthropicRoute

router = APIRouter(route_class=AnthropicRoute, tags=["Anthropic"])
