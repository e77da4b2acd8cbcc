"""Classifiers a deployment might plug in through `[routing] classifier`."""


def everything_is_math(text: str) -> str:
    return "math"


def says_nonsense(text: str) -> str:
    return "astrology"


NOT_CALLABLE = 42
