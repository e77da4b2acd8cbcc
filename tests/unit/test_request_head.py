"""The request head's bounds, counted on raw bytes (transports/request_head.py), with plain
function calls: at most 100 fields, lines of 8 KiB with their ending, 64 KiB in all."""

from __future__ import annotations

import pytest

from tokenwire.transports.request_head import (
    MAX_FIELDS,
    MAX_HEAD_BYTES,
    MAX_LINE_BYTES,
    HeadScanner,
    HeadTooLarge,
)

REQUEST_LINE = b"GET /healthz HTTP/1.1\r\n"


def head(fields: list[bytes]) -> bytes:
    return REQUEST_LINE + b"".join(field + b"\r\n" for field in fields) + b"\r\n"


def padded_field(line_bytes: int) -> bytes:
    """A header field whose line, its CRLF included, is `line_bytes` long."""
    return b"X-Pad: " + b"p" * (line_bytes - len(b"X-Pad: \r\n"))


def in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_head_ends_just_past_its_blank_line() -> None:
    data = head([b"Host: a"]) + b"body"
    assert HeadScanner().feed(data) == len(data) - len(b"body")


def test_a_head_split_anywhere_ends_at_the_same_byte() -> None:
    data = head([b"Host: a", b"Accept: */*"])
    for size in (1, 2, 3, 7):
        scanner = HeadScanner()
        ends = [scanner.feed(piece) for piece in in_pieces(data, size)]
        assert ends[:-1] == [None] * (len(ends) - 1)
        assert ends[-1] == len(data[(len(ends) - 1) * size :])


def test_a_crlf_split_between_reads_ends_the_head() -> None:
    scanner = HeadScanner()
    assert scanner.feed(REQUEST_LINE + b"Host: a\r\n\r") is None
    assert scanner.feed(b"\n") == 1


def test_a_lone_cr_is_no_blank_line() -> None:
    scanner = HeadScanner()
    assert scanner.feed(REQUEST_LINE + b"Host: a\r\nX\r") is None
    assert scanner.feed(b"\n") is None


def test_bare_lf_line_endings_end_a_head_too() -> None:
    data = b"GET / HTTP/1.1\nHost: a\n\n"
    assert HeadScanner().feed(data) == len(data)


def test_blank_lines_before_the_request_line_are_skipped() -> None:
    data = b"\r\n\r\n" + head([b"Host: a"])
    assert HeadScanner().feed(data) == len(data)


def test_the_scanner_starts_on_the_next_head_after_one_ends() -> None:
    first, second = head([b"Host: a"]), head([b"Host: b"])
    scanner = HeadScanner()
    data = first + second
    assert scanner.feed(data) == len(first)
    assert scanner.feed(data, len(first)) == len(data)


def test_a_hundred_fields_pass_and_a_hundred_and_first_is_too_many() -> None:
    fields = [b"X-%d: v" % i for i in range(MAX_FIELDS)]
    assert HeadScanner().feed(head(fields)) is not None
    with pytest.raises(HeadTooLarge) as refused:
        HeadScanner().feed(head([*fields, b"X-last: v"]))
    assert refused.value.bound == "fields"


def test_too_many_fields_are_refused_before_the_head_ends() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_FIELDS + 1))
    with pytest.raises(HeadTooLarge):
        HeadScanner().feed(REQUEST_LINE + fields)


def test_a_line_of_8_kib_passes_and_one_byte_more_is_refused() -> None:
    assert HeadScanner().feed(head([padded_field(MAX_LINE_BYTES)])) is not None
    with pytest.raises(HeadTooLarge) as refused:
        HeadScanner().feed(head([padded_field(MAX_LINE_BYTES + 1)]))
    assert refused.value.bound == "line"


def test_a_long_request_line_is_refused_too() -> None:
    line = b"GET /" + b"a" * MAX_LINE_BYTES + b" HTTP/1.1\r\n"
    with pytest.raises(HeadTooLarge):
        HeadScanner().feed(line + b"\r\n")


def test_a_long_line_is_refused_before_it_ends() -> None:
    scanner = HeadScanner()
    assert scanner.feed(REQUEST_LINE + b"X-Pad: " + b"p" * 8000) is None
    with pytest.raises(HeadTooLarge):
        scanner.feed(b"p" * 1000)


def test_a_line_split_between_reads_is_counted_whole() -> None:
    scanner = HeadScanner()
    field = padded_field(MAX_LINE_BYTES + 1) + b"\r\n"
    assert scanner.feed(REQUEST_LINE + field[:4000]) is None
    with pytest.raises(HeadTooLarge):
        scanner.feed(field[4000:] + b"\r\n")


def test_a_head_of_64_kib_passes_and_one_byte_more_is_refused() -> None:
    def head_of(size: int) -> bytes:
        fields = [padded_field(8000) for _ in range(8)]
        rest = size - len(head(fields))
        return head([*fields, padded_field(rest)])

    assert len(head_of(MAX_HEAD_BYTES)) == MAX_HEAD_BYTES
    assert HeadScanner().feed(head_of(MAX_HEAD_BYTES)) == MAX_HEAD_BYTES
    with pytest.raises(HeadTooLarge) as refused:
        HeadScanner().feed(head_of(MAX_HEAD_BYTES + 1))
    assert refused.value.bound == "size"


def test_endless_blank_lines_count_against_the_head() -> None:
    with pytest.raises(HeadTooLarge):
        HeadScanner().feed(b"\r\n" * (MAX_HEAD_BYTES // 2 + 1))
