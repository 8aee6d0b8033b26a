"""Parsing REST bodies within the memory budget: the numeric fast path agrees with Python's parser, refuses
what JSON refuses, and the parse-tree bound is an upper bound."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confserve.frontends.rest import _body
from confserve.frontends.rest._body import (
    LARGE_BODY_BYTES,
    ORJSON_MAX_BYTES,
    loads_json,
    parse_json_body,
    tree_bytes,
)


def parse(body: bytes, **options: Any) -> tuple[Any, list[tuple[int, str]]]:
    charges: list[tuple[int, str]] = []
    value = parse_json_body(body, lambda nbytes, what: charges.append((nbytes, what)), **options)
    return value, charges


@pytest.mark.parametrize("shape", [(9000,), (1200, 8), (150, 8, 8, 1), (30, 3, 4, 5, 6), (3000, 2, 1, 1, 1)])
@pytest.mark.parametrize("kind", ["float", "int"])
def test_large_numeric_arrays_become_the_arrays_python_would_build(shape: tuple[int, ...], kind: str) -> None:
    rng = np.random.default_rng(len(shape))
    values = rng.random(shape) * 200 - 100
    if kind == "int":
        values = (values * 10_000).astype(np.int64)
    body = json.dumps({"signature_name": "s", "instances": values.tolist(), "tail": [1, 2]}).encode()
    assert len(body) >= LARGE_BODY_BYTES
    value, charges = parse(body)
    array = value["instances"]
    assert isinstance(array, np.ndarray)
    expected = np.array(json.loads(body)["instances"])
    assert array.dtype == expected.dtype
    assert array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)  # the same float64 values, bit for bit
    assert value["tail"] == [1, 2]
    assert value["signature_name"] == "s"
    assert charges[0] == (array.size * 8, "a JSON array")
    assert charges[1][1] == "parsing the JSON body"
    assert charges[1][0] < 10_000  # only the small rest is parsed into objects


def numbers(count: int) -> bytes:
    return b",".join(b"1.5" for _ in range(count))


@pytest.mark.parametrize("bad", [b"01", b"+1", b".5", b"1.", b"1e", b"--1", b"1 2", b"0x10", b"1,,2", b"1,"])
def test_numbers_json_refuses_are_refused(bad: bytes) -> None:
    body = b'{"a": [' + numbers(30_000) + b"," + bad + b"]}"
    with pytest.raises(json.JSONDecodeError) as fast:
        parse(body)
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads(body)
    assert fast.value.pos == reference.value.pos


def test_an_error_after_a_parsed_array_is_reported_at_its_place_in_the_body() -> None:
    body = b'{"a": [' + numbers(30_000) + b'], "b": tru}'
    with pytest.raises(json.JSONDecodeError) as info:
        parse(body)
    assert info.value.pos == body.index(b"tru")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"a": [[' + numbers(30_000) + b"], [" + numbers(29_999) + b"]]}", list),  # ragged
        (b'{"a": "[' + numbers(30_000) + b']"}', str),  # inside a string
        (b'{"a": [' + numbers(30_000) + b", 1234567890123456789]}", list),  # 19 digits: maybe not int64
        (b'{"a": [' + numbers(30_000) + b", -1" + b"0" * 400 + b"]}", list),  # a float would overflow
        (b'{"a": [' + numbers(30_000) + b", NaN]}", list),  # NaN: the standard parser's
        (b'{"a": [[]], "b": [' + numbers(30_000) + b"]}", np.ndarray),  # the empty one stays a list
        (b'{"c": "\\n", "a": [' + numbers(30_000) + b"]}", list),  # a backslash: no fast path
    ],
)
def test_what_the_fast_path_does_not_take_is_parsed_as_python_does(body: bytes, kind: type) -> None:
    value, _ = parse(body)
    key = "b" if kind is np.ndarray else "a"
    assert isinstance(value[key], kind)
    if kind is not np.ndarray:
        assert value == json.loads(body)


def test_an_array_where_only_a_key_may_stand_is_still_refused() -> None:
    with pytest.raises(json.JSONDecodeError):
        parse(b"{[" + numbers(30_000) + b"]: 1}")


def test_without_arrays_every_value_is_python() -> None:
    body = b'{"examples": [{"x": [' + numbers(30_000) + b"]}]}"
    value, charges = parse(body, arrays=False)
    assert value == json.loads(body)
    assert charges == [(tree_bytes(body), "parsing the JSON body")]


@pytest.mark.parametrize(
    "body",
    [
        b"[" + b",".join([b"[]"] * 50_000) + b"]",
        b"[" + b",".join([b"{}"] * 50_000) + b"]",
        b"[" + b",".join([b'"ab"'] * 50_000) + b"]",
        b"[" + b",".join([b"0.5"] * 50_000) + b"]",
        b"[" + b",".join([b"12345678901"] * 50_000) + b"]",
        b'{"k": [' + b",".join([b'"\\u00e9\\u00e9"'] * 20_000) + b"]}",
        b"[" + b",".join([b'{"a": 1, "b": [2.5]}'] * 10_000) + b"]",
    ],
)
def test_the_tree_bound_is_above_what_python_builds(body: bytes) -> None:
    tracemalloc.start()
    try:
        value = json.loads(body)
        built, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del value
    assert built <= tree_bytes(body)


# -- loads_json: orjson where it agrees with the standard parser ---------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types, NaN equal to NaN (int 1 and float 1.0 differ); iterative, for deep
    nesting."""
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, list):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            pending.extend((x[k], y[k]) for k in x)
        elif isinstance(x, float):
            if not (x == y or (math.isnan(x) and math.isnan(y))):
                return False
        elif x != y:
            return False
    return True


def _agrees_with_json(text: bytes) -> None:
    """loads_json gives json.loads's value, or raises json.loads's error with the same wording."""
    refusal: BaseException | None = None
    try:
        expected: Any = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        refusal = exc
    if refusal is None:
        assert _same(loads_json(text), expected), text
        return
    with pytest.raises(type(refusal)) as raised:
        loads_json(text)
    assert str(raised.value) == str(refusal)  # the standard parser's wording and offset


EDGE_TEXTS = [
    b'{"instances": [[0.5, 1], [2e3, -0.0]], "signature_name": "s"}',
    b"[18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809]",
    b"[123456789012345678901234567890, 1e-0000000000000000000005, 0.12345678901234567890123]",
    b"[1e400, -1e400, 1e-400, NaN, Infinity, -Infinity]",
    b'["\\ud800", "\\udc00x", "\\ud83d\\ude00", "\xed\xa0\x80", "\xf0\x9f\x98\x80"]',
    b'\xef\xbb\xbf{"a": 1}',
    '{"a": 1}'.encode("utf-16"),
    b'{"a": 1, "a": 2}',
    b"[" * 1100 + b"]" * 1100,
    b"[" * 900 + b"]" * 900,
    b"",
    b"   ",
    b"{}x",
    b"[1,]",
    b"01",
    b'"\x01"',
    b'{"a" 1}',
    b"[1 2]",
    b"-",
    b"1.",
    b".5",
    b"+1",
    b"tru",
    b"nul",
    b'"\\x41"',
    b'"abc',
    b"\xff\xfe",
    b"[0.1, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308, 4.9406564584124654e-324]",
]


@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_loads_json_agrees_with_the_standard_parser_on_edge_cases(text: bytes) -> None:
    _agrees_with_json(text)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    value=_json_values, ascii_only=st.booleans(), cut=st.integers(min_value=0), flip=st.integers(min_value=0)
)
def test_loads_json_agrees_with_the_standard_parser_on_random_texts(
    value: Any, ascii_only: bool, cut: int, flip: int
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    _agrees_with_json(text)
    _agrees_with_json(text[: cut % (len(text) + 1)])  # truncated
    if text:  # one byte changed
        at = flip % len(text)
        _agrees_with_json(
            text[:at] + bytes([(text[at] + 1 + flip // len(text) % 255) % 256]) + text[at + 1 :]
        )


def test_loads_json_takes_the_fast_parser_only_where_it_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[bytes] = []
    fast = _body.orjson.loads

    def counting(text: bytes) -> Any:
        used.append(text)
        return fast(text)

    monkeypatch.setattr(_body.orjson, "loads", counting)
    assert loads_json(b'{"instances": [1.5, 2]}') == {"instances": [1.5, 2]}
    assert used == [b'{"instances": [1.5, 2]}']  # an ordinary body: the fast parser
    assert loads_json(b"[1234567890123456789]") == [1234567890123456789]
    assert loads_json(b"[-12345678901234567890]") == [-12345678901234567890]
    assert loads_json(b"[1.5, 2]" + b" " * ORJSON_MAX_BYTES) == [1.5, 2]
    assert len(used) == 1  # a long integer part, or a text over the bound: never the fast parser
    assert loads_json(b"[0.00012345678901234567]") == [0.00012345678901234567]  # a long fraction: fast
    assert len(used) == 2
