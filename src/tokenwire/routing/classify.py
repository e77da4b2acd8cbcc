"""Task classification: which kind of work a prompt asks for, by rules a person can read.

Each task type has cues: words and phrases, and shapes of text (a code fence,
an arithmetic expression, a long pasted passage). Every cue that matches adds
its weight to its task type; the heaviest type wins, and a prompt that matches
nothing (or too little) is `conversation`. The result carries the cues that
decided it, so that a routing decision can say why. It costs tens of
microseconds (a few compiled regular expressions over the prompt's first
`SCAN_CHARS` characters), and `tests/data/task_prompts.csv` holds the labelled
prompts it is measured on.

A deployment can replace it: `[routing] classifier = "package.module:function"`
names a function from the prompt's text to one of the `TaskType` values.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class TaskType(StrEnum):
    CODE = "code"
    ANALYSIS = "analysis"
    SUMMARIZATION = "summarization"
    TRANSLATION = "translation"
    MATH = "math"
    CREATIVE = "creative"
    CONVERSATION = "conversation"


# Only the start of a long prompt is looked at: a pasted book must not cost milliseconds.
SCAN_CHARS = 4000
# Below this total weight the prompt is small talk, whatever faint cue it has.
THRESHOLD = 1.0


@dataclass(frozen=True, slots=True)
class Classification:
    task: TaskType
    reason: str


@dataclass(frozen=True, slots=True)
class _Cue:
    task: TaskType
    weight: float
    pattern: re.Pattern[str]
    name: str


def _cue(task: TaskType, weight: float, name: str, pattern: str) -> _Cue:
    # Matched against the lower-cased text: cheaper than re.IGNORECASE on every pattern.
    return _Cue(task, weight, re.compile(pattern), name)


_LANGUAGES = (
    r"english|french|german|spanish|italian|portuguese|dutch|russian|chinese|japanese|"
    r"korean|arabic|hindi|turkish|polish|swedish|greek|hebrew|latin"
)

_CUES: tuple[_Cue, ...] = (
    # code
    _cue(TaskType.CODE, 3.0, "a code block", r"```|^\s{4,}\S.*[;{}()]\s*$"),
    _cue(
        TaskType.CODE,
        2.0,
        "a programming language",
        r"\b(python|javascript|typescript|java|rust|golang|kotlin|swift|ruby|php|"
        r"sql|bash|shell script|html|css|regex|regular expression)\b|\bc(\+\+|#)",
    ),
    _cue(
        TaskType.CODE,
        1.5,
        "programming words",
        r"\b(function|method|class|compile[sr]?|bug|debug|stack ?trace|exception|api|"
        r"endpoint|refactor|unit tests?|algorithm|variable|loop|recursion|library|"
        r"dockerfile|git|query|script|snippet|segfault|segmentation fault|null pointer|"
        r"binary search|linked list|hash ?map|data structure|sorting|traceback|"
        r"error message|async|await|callback|json|yaml|npm|pip install|node\.?js|node|"
        r"flask|django|react|vue|spring boot|rails|kubernetes|docker|database schema|"
        r"one-liner|command line|terminal|div|flexbox|pandas|dataframe|numpy|css grid|"
        r"frontend|backend|deploy(ment)?|compiler|linter|type error)\b",
    ),
    _cue(
        TaskType.CODE,
        2.0,
        "code syntax",
        # `\w\(\)`, not `\w+\(\)`: the same prompts match, but `\w+` retried from every
        # letter of a long word made one 4,000-character word cost ~80 ms of CPU.
        r"\b(def|return|import|const|let|var|fn|public static|#include)\b.*[(=:{]|=>|\w\(\)",
    ),
    # translation
    _cue(TaskType.TRANSLATION, 3.0, "asks to translate", r"\btranslat(e|ion|ing)\b"),
    _cue(
        TaskType.TRANSLATION,
        2.5,
        "into another language",
        rf"\b(in|into|to)\s+(\w+\s+)?({_LANGUAGES})\b|\bhow do (you|i) say\b",
    ),
    # summarization
    _cue(
        TaskType.SUMMARIZATION,
        3.0,
        "asks for a summary",
        r"\b(summari[sz]e|summary|tl;?dr|condense|recap|sum up|key points|main points|"
        r"shorten|in (a|one|two|three) (sentence|paragraph|bullet)s?|bullet points|gist|"
        r"boil (it|this|that) down|essentials|shorter|key findings|in short|briefly|"
        r"short version|overview|digest|abridged)\b",
    ),
    _cue(TaskType.SUMMARIZATION, 0.5, "a long passage", r"^[\s\S]{1200,}$"),
    # math
    _cue(
        TaskType.MATH,
        3.0,
        "an arithmetic expression",
        # + and - only between spaces: "0-9" and "2-3 days" are not sums.
        r"\d+(\.\d+)?\s*[*/^\u00d7\u00f7]\s*\d+|\d\s+[-+]\s+\d|\b\d+\s*%\s*of\b|\bsqrt\(|∫|\bx\^2",
    ),
    _cue(
        TaskType.MATH,
        2.0,
        "mathematics words",
        r"\b(calculate|compute|solve|equation|integral|derivative|probability|prime|"
        r"factori[sz]e|sum of|product of|how many|how much is|what is \d|percent(age)?|"
        r"average|median|matrix|theorem|prove|algebra|geometry|fraction|speed|how fast|"
        r"how far|per hour|compound interest|invest(ed|ing)? \$?\d+|how many ways|"
        r"permutations?|combinations?|power of|squared|cubed|fahrenheit|celsius|"
        r"convert \d+|square root|cube root|factorial|logarithm|log of|modulo|"
        r"solve for)\b|\d+ ?% (a|per) year",
    ),
    # analysis
    _cue(
        TaskType.ANALYSIS,
        2.0,
        "asks for analysis",
        r"\b(analy[sz]e|analysis|compare|comparison|contrast|evaluate|assess|"
        r"advantages|disadvantages|explain why|why does|why do|why is|"
        r"critique|review|implications|impact of|root cause|versus|vs\.?|"
        r"what explains|explain the|affect|effects? of|causes?|popularity of|"
        r"find the (weak|strong|best|worst)|why did|risks? of|consequences|"
        r"what led to)\b",
    ),
    _cue(
        TaskType.ANALYSIS,
        2.5,
        "weighs options",
        r"\b(weigh|pros and cons|trade-?offs?|which is better|better choice)\b|"
        r"\bshould (we|i)\b.*\bor\b",
    ),
    _cue(
        TaskType.ANALYSIS,
        1.0,
        "data or argument",
        r"\b(data|dataset|trend|metrics?|results|evidence|argument|strategy|risk|numbers|"
        r"figures|sales|prices|market)\b",
    ),
    # creative
    _cue(
        TaskType.CREATIVE,
        3.0,
        "asks for a creative piece",
        r"\b(poem|poetry|haiku|limerick|sonnet|story|short story|fairy tale|lyrics|song|"
        r"novel|screenplay|dialogue|fiction|slogan|tagline|rap|verse|fable)s?\b",
    ),
    _cue(
        TaskType.CREATIVE,
        1.5,
        "creative words",
        r"\b(imagine|invent|creative|write (me )?an? |compose|once upon a time|"
        r"make up|come up with|brainstorm|character|plot|rhym(e|ing)|riddle|joke|toast|"
        r"as if you were|pretend|in the style of)\b",
    ),
)


def classify(text: str) -> Classification:
    """The task a prompt asks for, with the cues that decided it."""
    sample = text[:SCAN_CHARS].lower()
    scores: dict[TaskType, float] = {}
    cues: dict[TaskType, list[str]] = {}
    for cue in _CUES:
        if cue.pattern.search(sample):
            scores[cue.task] = scores.get(cue.task, 0.0) + cue.weight
            cues.setdefault(cue.task, []).append(cue.name)
    if not scores:
        return Classification(TaskType.CONVERSATION, "no task cue")
    task, score = max(scores.items(), key=lambda item: item[1])
    if score < THRESHOLD:
        return Classification(TaskType.CONVERSATION, "only a faint cue")
    return Classification(task, ", ".join(cues[task]))


Classifier = Callable[[str], Classification]


def load_classifier(dotted: str | None) -> Classifier:
    """The built-in classifier, or a deployment's own `package.module:function`.

    The function takes the prompt's text and returns a task type's value (or a
    `TaskType`); anything else is a configuration error at start-up (`ValueError`)
    or, for an unknown value returned later, `conversation`.
    """
    if dotted is None:
        return classify
    module_name, _, attribute = dotted.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{dotted!r}: expected 'package.module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{dotted!r}: {exc}") from None
    if not callable(function):
        raise ValueError(f"{dotted!r} is not callable")

    def custom(text: str) -> Classification:
        value = function(text)
        try:
            return Classification(TaskType(value), f"classifier {dotted}")
        except ValueError:
            return Classification(TaskType.CONVERSATION, f"classifier {dotted} said {value!r}")

    return custom
