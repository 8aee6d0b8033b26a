"""Parsing REST bodies within the memory budget: the numeric fast path agrees with Python's parser, refuses
what JSON refuses, and the parse-tree bound is an upper bound."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import numpy as np
import pytest

from confserve.frontends.rest._body import LARGE_BODY_BYTES, parse_json_body, tree_bytes


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
