"""A request's log as an OpenAI Responses event stream, and as a Response object.

The events are derived from the log the same way every time, so each one's
`sequence_number` (its position in the response's own stream, from 0) is the
same whenever the log is read: a client that left after event N re-attaches
with `starting_after=N` and gets exactly the events after it, in the middle of
a tool call too. The stream is `response.created` and `response.in_progress`
(at `stream_start`), then output items numbered by `output_index` in the order
they open:

- a message item, opened when text comes (`response.output_item.added`,
  `response.content_part.added`, a `response.output_text.delta` per text event)
  and closed (`response.output_text.done`, `response.content_part.done`,
  `response.output_item.done`) when a tool call starts or the answer ends;
- a `function_call` item per tool call (`response.output_item.added` at its
  `tool_call_start`, `response.function_call_arguments.delta` per fragment,
  `response.function_call_arguments.done` and `response.output_item.done` at
  its `tool_call_end`), whose `id` (`fc_...`) and `call_id` (tokenwire's
  `call_...`) never change; calls that run in parallel are open together.

At `stream_end`, what is still open closes, then one of `response.completed`,
`response.incomplete` (the answer reached `max_output_tokens`),
`response.failed` or `response.cancelled`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.tools import CALL_ID_PREFIX
from tokenwire.protocol.events import TEXT_EVENTS, EventType

_TERMINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    "cancelled": "response.cancelled",
}

FUNCTION_CALL_ITEM_PREFIX = "fc_"


def function_call_item_id(call_id: str) -> str:
    """The `fc_...` item id of the call `call_...`: derived, so that it is the same
    whenever and wherever the call is shown (events, the Response, input items)."""
    return FUNCTION_CALL_ITEM_PREFIX + call_id.removeprefix(CALL_ID_PREFIX)


def response_of_message(item_id: str) -> str | None:
    """The id of the response whose output holds the message item `item_id`, read
    from the id itself (`msg_<hex>`, `msg_<hex>_<index>` of `resp_<hex>`)."""
    if not item_id.startswith("msg_"):
        return None
    return "resp_" + item_id.removeprefix("msg_").split("_")[0]


@dataclass
class _Message:
    """An output message item: one output_text part."""

    id: str
    output_index: int
    text: list[str] = field(default_factory=list)
    status: str = "in_progress"

    def part(self) -> dict[str, Any]:
        return {
            "type": "output_text",
            "text": "".join(self.text),
            "annotations": [],
            "logprobs": [],
        }

    def item(self) -> dict[str, Any]:
        done = self.status != "in_progress"
        return {
            "id": self.id,
            "type": "message",
            "status": self.status,
            "role": "assistant",
            "content": [self.part()] if done or self.text else [],
        }


@dataclass
class _FunctionCall:
    """A `function_call` output item: one tool call of the answer."""

    call_id: str
    name: str
    output_index: int
    arguments: list[str] = field(default_factory=list)
    status: str = "in_progress"

    @property
    def id(self) -> str:
        return function_call_item_id(self.call_id)

    def item(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function_call",
            "status": self.status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": "".join(self.arguments),
        }


class ResponseStream:
    """Feed it a log's records in order, from the first: it gives the events they make."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._params: dict[str, Any] = log.annotations.get("responses", {})
        self._hex = log.key.request_id.removeprefix("resp_")
        self._next = 0
        self._items: list[_Message | _FunctionCall] = []
        self._message: _Message | None = None
        """The message item open now, if text is being written."""
        self._calls: dict[int, _FunctionCall] = {}
        """The answer's calls by their `index` in the log."""
        self._model = str(self._params.get("model", ""))
        self.status = "in_progress"
        self._usage: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None

    def feed(self, record: Record) -> list[dict[str, Any]]:
        kind = record.event_type
        if kind is EventType.STREAM_START:
            return self._opening()
        if kind is EventType.METADATA and "fallback_from" not in record.data:
            self._model = str(record.data.get("recommended_provider", self._model))
        elif kind in TEXT_EVENTS:
            data = record.data
            return self._text(str(data.get("token", data.get("chunk", ""))))
        elif kind is EventType.TOOL_CALL_START:
            return self._call_started(record.data)
        elif kind is EventType.TOOL_CALL_DELTA:
            return self._call_fragment(record.data)
        elif kind is EventType.TOOL_CALL_END:
            return self._call_ended(record.data)
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
        parallel = params.get("parallel_tool_calls")
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
            "output": [item.item() for item in self._items],
            "parallel_tool_calls": True if parallel is None else parallel,
            "previous_response_id": params.get("previous_response_id"),
            "store": params.get("store", True),
            "temperature": params.get("temperature"),
            "top_p": params.get("top_p"),
            "text": {"format": (params.get("text") or {}).get("format") or {"type": "text"}},
            "tool_choice": params.get("tool_choice") or "auto",
            "tools": params.get("tools") or [],
            "truncation": "disabled",
            "usage": {
                "input_tokens": usage.get("prompt_tokens", 0),
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
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

    def _opening(self) -> list[dict[str, Any]]:
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def _text(self, delta: str) -> list[dict[str, Any]]:
        events = [] if self._message is not None else self._message_opened()
        message = self._message
        assert message is not None
        message.text.append(delta)
        events.append(
            self._event(
                "response.output_text.delta", **_part_ref(message), delta=delta, logprobs=[]
            )
        )
        return events

    def _message_opened(self) -> list[dict[str, Any]]:
        index = len(self._items)
        # The first message keeps the id a text answer has always had.
        suffix = f"_{index}" if index else ""
        message = _Message(f"msg_{self._hex}{suffix}", index)
        self._items.append(message)
        self._message = message
        return [
            self._event("response.output_item.added", output_index=index, item=message.item()),
            self._event(
                "response.content_part.added",
                **_part_ref(message),
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def _message_closed(self, status: str) -> list[dict[str, Any]]:
        message, self._message = self._message, None
        if message is None:
            return []
        message.status = status
        return [
            self._event(
                "response.output_text.done",
                **_part_ref(message),
                text="".join(message.text),
                logprobs=[],
            ),
            self._event("response.content_part.done", **_part_ref(message), part=message.part()),
            self._event(
                "response.output_item.done",
                output_index=message.output_index,
                item=message.item(),
            ),
        ]

    def _call_started(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        # Output items follow one another: the text before a call is an item of its own.
        events = self._message_closed("completed")
        call = _FunctionCall(str(data["id"]), str(data["name"]), len(self._items))
        self._items.append(call)
        self._calls[int(data["index"])] = call
        events.append(
            self._event(
                "response.output_item.added", output_index=call.output_index, item=call.item()
            )
        )
        return events

    def _call_fragment(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        call = self._calls[int(data["index"])]
        delta = str(data.get("arguments", ""))
        call.arguments.append(delta)
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=call.id,
                output_index=call.output_index,
                delta=delta,
            )
        ]

    def _call_ended(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        call = self._calls[int(data["index"])]
        # The end's arguments are the call's, whole: they stand over the fragments.
        call.arguments = [str(data["arguments"])]
        call.status = "completed"
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call.id,
                output_index=call.output_index,
                arguments=call.item()["arguments"],
            ),
            self._event(
                "response.output_item.done", output_index=call.output_index, item=call.item()
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
        events = self._message_closed("completed" if self.status == "completed" else "incomplete")
        for call in self._items:
            # A call cut short (cancelled, failed) was never final: it has no `.done`
            # arguments, only its item's end, incomplete.
            if isinstance(call, _FunctionCall) and call.status == "in_progress":
                call.status = "incomplete"
                events.append(
                    self._event(
                        "response.output_item.done",
                        output_index=call.output_index,
                        item=call.item(),
                    )
                )
        events.append(self._event(_TERMINAL[self.status], response=self.response()))
        return events

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


def _part_ref(message: _Message) -> dict[str, Any]:
    return {"item_id": message.id, "output_index": message.output_index, "content_index": 0}


def replayed(log: EventLog) -> ResponseStream:
    """The response as its log holds it now (all of it must still be held)."""
    stream = ResponseStream(log)
    for record in log.records(0):
        stream.feed(record)
    return stream
