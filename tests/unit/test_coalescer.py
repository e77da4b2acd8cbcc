"""Coalescing deltas: first text at once, the rest held briefly, nothing lost."""

import random

import pytest

from tokenwire.core.chunking import Coalescer


def test_first_delta_is_never_held() -> None:
    coalescer = Coalescer(max_chars=100, flush_interval=1.0)
    assert coalescer.push("Hello", now=0.0) == "Hello"
    assert coalescer.due_at is None


def test_later_deltas_are_held_until_the_flush_deadline() -> None:
    coalescer = Coalescer(max_chars=100, flush_interval=0.05)
    coalescer.push("a", now=0.0)
    assert coalescer.push("b", now=0.01) is None
    assert coalescer.due_at == pytest.approx(0.06)
    assert coalescer.push("c", now=0.03) is None
    assert coalescer.push("d", now=0.07) == "bcd"
    assert coalescer.due_at is None


def test_held_text_goes_out_once_it_reaches_max_chars() -> None:
    coalescer = Coalescer(max_chars=4, flush_interval=10.0)
    coalescer.push("x", now=0.0)
    assert coalescer.push("ab", now=0.0) is None
    assert coalescer.push("cd", now=0.0) == "abcd"


def test_take_returns_everything_held_and_none_when_empty() -> None:
    coalescer = Coalescer(max_chars=100, flush_interval=1.0)
    coalescer.push("x", now=0.0)
    coalescer.push("y", now=0.0)
    assert coalescer.take() == "y"
    assert coalescer.take() is None


def test_no_text_is_lost_or_reordered() -> None:
    rng = random.Random(7)
    coalescer = Coalescer(max_chars=12, flush_interval=0.02)
    deltas = ["".join(rng.choice("abc ") for _ in range(rng.randint(0, 6))) for _ in range(500)]
    out, now = [], 0.0
    for delta in deltas:
        now += rng.random() * 0.01
        chunk = coalescer.push(delta, now)
        if chunk is not None:
            out.append(chunk)
    out.append(coalescer.take() or "")
    assert "".join(out) == "".join(deltas)
    assert all(out[:-1])
