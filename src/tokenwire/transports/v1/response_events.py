"""A request's log as an OpenAI Responses event stream, and as a Response object.

The events are derived from the log the same way every time, so each one's
`sequence_number` (its position in the response's own stream, from 0) is the
same whenever the log is read: a client that left after event N re-attaches
with `starting_after=N` and gets exactly the events after it. The stream is:
`response.created` and `response.in_progress` (at `stream_start`), one message
item with one output_text part (`response.output_item.added`,
`response.content_part.added`), a `response.output_text.delta` per text event,
then at `stream_end` the `.done` events and one of `response.completed`,
`response.incomplete` (the answer reached `max_output_tokens`),
`response.failed` or `response.cancelled`.
"""

from __future__ import annotations

from typing import Any

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.protocol.events import TEXT_EVENTS, EventType

_TERMINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.cancelled",
}


class ResponseStream:
    """Feed it a log's records in order, from the first: it gives the events they make."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._params: dict[str, Any] = log.annotations.get("responses", {})
        self._item_id = "msg_" + log.key.request_id.removeprefix("resp_")
        self._next = 0
        self._text: list[str] = []
        self._model = str(self._params.get("model", ""))
        self.status = "in_progress"
        self._usage: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._finish: str | None = None

    def feed(self, record: Record) -> list[dict[str, Any]]:
        kind = record.event_type
        if kind is EventType.STREAM_START:
            return self._opening()
        if kind is EventType.METADATA and "fallback_from" not in record.data:
            self._model = str(record.data.get("recommended_provider", self._model))
        elif kind in TEXT_EVENTS:
            data = record.data
            delta = data.get("token", data.get("chunk", ""))
            self._text.append(delta)
            return [
                self._event(
                    "response.output_text.delta", **self._part_ref(), delta=delta, logprobs=[]
                )
            ]
        elif kind is EventType.ERROR:
            self._error = record.data
        elif kind is EventType.STREAM_END:
            return self._closing(record.data)
        return []

    def response(self) -> dict[str, Any]:
        """The Response object as the records fed so far make it."""
        params = self._params
        done = self.status != "in_progress"
        usage = self._usage or {}
        return {
            "id": self._log.key.request_id,
            "object": "response",
            "created_at": int(self._log.created_at),
            "status": self.status,
            "background": params.get("background", False),
            "error": self._error_object(),
            "incomplete_details": (
                {"reason": "max_output_tokens"} if self.status == "incomplete" else None
            ),
            "instructions": params.get("instructions"),
            "max_output_tokens": params.get("max_output_tokens"),
            "metadata": params.get("metadata") or {},
            "model": self._model,
            "output": [self._item(done)] if self._text or done else [],
            "parallel_tool_calls": True,
            "previous_response_id": params.get("previous_response_id"),
            "store": params.get("store", True),
            "temperature": params.get("temperature"),
            "top_p": params.get("top_p"),
            "text": {"format": (params.get("text") or {}).get("format") or {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "truncation": "disabled",
            "usage": {
                "input_tokens": usage.get("prompt_tokens", 0),
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage.get("completion_tokens", 0),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.get("total_tokens", 0),
                "estimated": usage.get("estimated", False),
            }
            if done
            else None,
            "user": None,
        }

    # -- internals ------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._next, **fields}
        self._next += 1
        return event

    def _part_ref(self) -> dict[str, Any]:
        return {"item_id": self._item_id, "output_index": 0, "content_index": 0}

    def _part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": "".join(self._text),
            "annotations": [],
            "logprobs": [],
        }

    def _item(self, done: bool) -> dict[str, Any]:
        status = (
            "in_progress"
            if not done
            else ("incomplete" if self.status != "completed" else "completed")
        )
        return {
            "id": self._item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [self._part()] if done or self._text else [],
        }

    def _opening(self) -> list[dict[str, Any]]:
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
            self._event(
                "response.output_item.added",
                output_index=0,
                item={**self._item(False), "content": []},
            ),
            self._event(
                "response.content_part.added",
                **self._part_ref(),
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def _closing(self, end: dict[str, Any]) -> list[dict[str, Any]]:
        status = str(end.get("status"))
        self._usage = end.get("usage")
        self._model = str(end.get("provider_used") or self._model)
        if status == "completed":
            self.status = "incomplete" if end.get("finish_reason") == "length" else "completed"
        else:
            self.status = "failed" if status == "error" else "cancelled"
        text = "".join(self._text)
        return [
            self._event("response.output_text.done", **self._part_ref(), text=text, logprobs=[]),
            self._event("response.content_part.done", **self._part_ref(), part=self._part()),
            self._event("response.output_item.done", output_index=0, item=self._item(True)),
            self._event(_TERMINAL[self.status], response=self.response()),
        ]

    def _error_object(self) -> dict[str, Any] | None:
        if self.status != "failed":
            return None
        error = self._error or {}
        return {
            "code": "server_error"
            if error.get("error_type") == "internal_error"
            else str(error.get("error_type", "server_error")),
            "message": str(error.get("error", "the response failed")),
        }


def replayed(log: EventLog) -> ResponseStream:
    """The response as its log holds it now (all of it must still be held)."""
    stream = ResponseStream(log)
    for record in log.records(0):
        stream.feed(record)
    return stream
