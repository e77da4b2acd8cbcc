"""Task classification from the text of a request (cheap keyword rules, no model)."""

from __future__ import annotations

import re
from enum import StrEnum


class TaskType(StrEnum):
    CODE = "code"
    ANALYSIS = "analysis"
    SUMMARIZATION = "summarization"
    TRANSLATION = "translation"
    MATH = "math"
    CREATIVE = "creative"
    CONVERSATION = "conversation"


# First match wins, so the more specific kinds come first.
_RULES: tuple[tuple[TaskType, re.Pattern[str]], ...] = tuple(
    (task, re.compile(pattern, re.IGNORECASE))
    for task, pattern in (
        (
            TaskType.CODE,
            r"```|\b(code|function|python|javascript|typescript|rust|sql|bug|"
            r"compile|regex|class|def|api|script)\b",
        ),
        (TaskType.TRANSLATION, r"\b(translate|translation|in (french|german|spanish|english))\b"),
        (TaskType.SUMMARIZATION, r"\b(summari[sz]e|summary|tl;?dr|condense)\b"),
        (TaskType.MATH, r"\b(calculate|compute|solve|equation|integral|derivative|sum of)\b"),
        (TaskType.ANALYSIS, r"\b(analy[sz]e|analysis|compare|evaluate|assess|explain why)\b"),
        (TaskType.CREATIVE, r"\b(story|poem|write a|lyrics|imagine|creative|haiku)\b"),
    )
)


def classify(text: str) -> TaskType:
    for task, pattern in _RULES:
        if pattern.search(text):
            return task
    return TaskType.CONVERSATION
