"""Text for and from the local model: prompt formats, and token bytes to answer text.

Pure logic apart from tokenizing: testable without loading a model.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any, Literal

from tokenwire.core.provider import Message

PromptFormat = Literal["qa", "gemma", "plain"]

Segment = tuple[str, bool]
"""Prompt text, and whether it is markup whose special tokens count (never user text)."""


def prompt_segments(messages: Sequence[Message], prompt_format: PromptFormat) -> list[Segment]:
    if prompt_format == "plain":
        return [("\n".join(m.content for m in messages), False)]
    if prompt_format == "qa":
        label = {"system": "", "user": "Question: ", "assistant": "Answer: "}
        lines = [f"{label[m.role]}{m.content}\n" for m in messages]
        return [("".join(lines) + "Answer:", False)]
    # Gemma has no system turn: system text opens the next user turn.
    segments: list[Segment] = []
    system: list[str] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
            continue
        text = "\n\n".join([*system, m.content]) if m.role == "user" else m.content
        if m.role == "user":
            system = []
        role = "user" if m.role == "user" else "model"
        segments += [(f"<start_of_turn>{role}\n", True), (text, False), ("<end_of_turn>\n", True)]
    if system:
        segments += [("<start_of_turn>user\n", True), ("\n\n".join(system), False)]
        segments.append(("<end_of_turn>\n", True))
    segments.append(("<start_of_turn>model\n", True))
    return segments


def format_stops(prompt_format: PromptFormat) -> tuple[str, ...]:
    """Where an answer ends in that format, besides the model's end-of-turn tokens."""
    return ("\nQuestion:",) if prompt_format == "qa" else ()


def tokenize_prompt(llm: Any, segments: Sequence[Segment]) -> list[int]:
    tokens: list[int] = llm.tokenize(b"", add_bos=True)
    for text, markup in segments:
        if text:
            tokens += llm.tokenize(text.encode(), add_bos=False, special=markup)
    return tokens


class AnswerText:
    """Token bytes in, answer text out.

    Only whole UTF-8 characters leave (a character split across tokens waits
    for its last byte); text that may begin a stop sequence is held until it
    is clear, and nothing from a stop sequence on is ever sent. With `strip`,
    whitespace at either end of the answer is dropped (inner whitespace waits
    for the text after it).
    """

    def __init__(self, stops: Sequence[str], strip: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = tuple(s for s in stops if s)
        self._strip = strip
        self._started = False
        self._held = ""
        self.stopped = False
        self.stopped_by: str | None = None
        """The stop sequence that ended the answer, where one did."""

    def push(self, piece: bytes) -> str:
        return self._feed(self._decoder.decode(piece))

    def finish(self) -> str:
        """The text still held back, at the end of the answer.

        Bytes of a character the answer was cut off in the middle of are dropped.
        """
        text, self._held = self._held, ""
        return text.rstrip() if self._strip else text

    def _feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if self._strip and not self._started:
            text = text.lstrip()
        self._started = self._started or bool(text)
        held = self._held + text
        found = [(i, s) for i, s in ((held.find(s), s) for s in self._stops) if i >= 0]
        if found:
            at, self.stopped_by = min(found, key=lambda hit: hit[0])
            self.stopped = True
            self._held = ""
            answer = held[:at]
            return answer.rstrip() if self._strip else answer
        cut = len(held) - _partial_stop(held, self._stops)
        if self._strip:
            cut = len(held[:cut].rstrip())
        self._held = held[cut:]
        return held[:cut]


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of `text` that begins some stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
