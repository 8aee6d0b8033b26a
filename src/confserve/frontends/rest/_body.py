"""Parsing a REST body within the request's memory budget: large numeric arrays straight into numpy.

Theory of operation. Python's JSON parser builds an object per value and a list per array: a tensor in
TF Serving's row format, say a batch of [8, 8, 1] images, costs about 32 bytes per number plus 64 per
innermost list, ten times the body or more (a 40 MiB body held half a gigabyte). So:

- A body under `LARGE_BODY_BYTES`, or one holding a backslash, is parsed by the standard library after
  its account is charged `tree_bytes(body)`, an upper bound of the objects the parse can build, from a
  count of the body's separators.
- In a larger body, every nested array of at least `RUN_MIN_BYTES` characters that holds only numbers
  is parsed into one numpy array (float64 if any number has a fraction or exponent, else int64) and
  replaced in the text by a small placeholder; the rest is parsed as above, and the placeholders are
  swapped for the arrays. The array is checked strictly before anything is allocated: each number with
  JSON's grammar, every array at one depth with the same length, at most `MAX_FAST_RANK` dimensions, by
  one regular expression built for its shape (possessive, so it keeps no backtracking state); its
  elements are then charged (8 bytes each) and parsed by numpy in chunks of `CHUNK_BYTES` into the
  preallocated array. An array that does not pass (ragged, empty, NaN, an integer part of 19 digits)
  stays in the text and gets the standard parser and its checks and error messages.

The parser is orjson where it gives the standard library's answer, 5-6x faster on a small body; the
standard library parses the rest. orjson refuses what `json.loads` accepts (NaN and Infinity, lone UTF-16
surrogates, a byte-order mark, UTF-16/32 text, a number beyond a double's range, nesting past 1024): on
any refusal the text is parsed again by `json.loads`, whose answer or error (with its wording and
offset) stands. orjson turns an integer beyond 64 bits into a float without a word, so a text holding an
integer part of 19 digits or more (every such integer has one) goes to `json.loads` directly. That check
copies the text once, so only texts up to `ORJSON_MAX_BYTES` take this path (the speed matters most for
small requests; a large body's numeric arrays take the fast path below). It accepts nothing the
standard parser refuses (tests/unit/frontends/rest/test_body.py compares the two on edge cases and
random texts).

Why a body must hold no backslash for the fast path: outside strings JSON has none, and inside strings
a quote is always escaped, so without one a position is inside a string exactly when an odd number of
quotes precede it; the placeholder (a list whose first element holds a NUL, which no valid body
without a backslash can spell) cannot collide with anything the client sent, and is invalid where JSON
allows only a string (an object key).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ["LARGE_BODY_BYTES", "loads_json", "parse_json_body", "tree_bytes"]

LARGE_BODY_BYTES: Final = 64 * 1024
ORJSON_MAX_BYTES: Final = 1 << 20  # a larger text goes to the standard parser (see loads_json)
RUN_MIN_BYTES: Final = 4096
MAX_FAST_RANK: Final = 6  # the checking expression grows as 2^rank
CHUNK_BYTES: Final = 1 << 20
_MARK: Final = "\x00confserve-array"

_NUMBER: Final = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_WS: Final = rb"[ \t\n\r]*"
_RUN: Final = re.compile(rb"\[[0-9\[\],.eE+\- \t\n\r]{%d,}" % (RUN_MIN_BYTES - 1))
# An integer part of 19 digits or more (not a fraction's or an exponent's digits): it may not fit int64,
# or as a float may overflow where Python's int would be refused; the standard parser decides.
_LONG_INTEGER: Final = re.compile(rb"(?<![0-9.eE+])[0-9]{19}")
_INTEGER_PARTS: Final = bytes(
    ord("0") if chr(c).isdigit() and c < 128 else c if c in b".eE+" else ord(" ") for c in range(256)
)
_LONG_INTEGER_MARK: Final = b" " + b"0" * 19
_FLOAT_MARKS: Final = re.compile(rb"[.eE]")
_STRIP: Final = bytes.maketrans(b"[]", b"  ")

Charge = Callable[[int, str], None]


# Upper bounds of CPython 3.11's objects per JSON item (64-bit): a list slot or dict entry, a float (24)
# or an int below 2^60 (32), a list's header and growth, a dict's header, a str's header.
_PER_ITEM = 8 + 32
_PER_LIST = 72
_PER_OBJECT = 240
_PER_ENTRY = 48
_PER_STRING = 56


def tree_bytes(body: bytes) -> int:
    """An upper bound of the memory `json.loads(body)` builds: every item follows a separator or an
    opening bracket; string and number texts can take up to four bytes per character once decoded."""
    lists, objects, entries = body.count(b"["), body.count(b"{"), body.count(b":")
    items = body.count(b",") + lists + objects + entries + 1
    payload = len(body) if body.isascii() and b"\\u" not in body else 4 * len(body)
    return (
        _PER_ITEM * items
        + _PER_LIST * lists
        + _PER_OBJECT * objects
        + _PER_ENTRY * entries
        + _PER_STRING * (body.count(b'"') // 2)
        + payload
    )


def _may_hold_long_integer(text: bytes) -> bool:
    """Whether `text` may hold an integer part of 19 digits or more: each digit becomes 0, a character
    that may precede an integer part (anything but a digit, '.', 'e', 'E' and '+') a space, and the
    result is searched for a space and 19 zeros. Several times faster than `_LONG_INTEGER`, whose engine
    tries every position; an exponent's digits after '-' count too, which only costs orjson's speed."""
    return _LONG_INTEGER_MARK in (b" " + text).translate(_INTEGER_PARTS)


def loads_json(text: bytes) -> Any:
    """`json.loads(text)`, through orjson when it gives the same answer (see the module docstring)."""
    if len(text) <= ORJSON_MAX_BYTES and not _may_hold_long_integer(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the standard parser accepts it or reports it, as it always has
    return json.loads(text)


def parse_json_body(
    body: bytes, charge: Charge, loads: Callable[[bytes], Any] = loads_json, *, arrays: bool = True
) -> Any:
    """The JSON value of `body` (with `arrays`, the arrays found by the fast path as numpy arrays, for
    tensors; without, plain lists, for tf.Example features), charging `charge(bytes, what)` before each
    allocation; `loads` parses the rest (and raises its errors)."""
    if not arrays or len(body) < LARGE_BODY_BYTES or b"\\" in body:
        charge(tree_bytes(body), "parsing the JSON body")
        return loads(body)
    pieces: list[bytes] = []
    shifts: list[tuple[int, int]] = []  # (offset in the rewritten text, offset in the body - that offset)
    found_arrays: list[npt.NDArray[Any]] = []
    position = 0  # body[:position] is in `pieces`
    scanned = 0  # quotes are counted up to here
    quotes = 0
    search_from = 0
    while (run := _RUN.search(body, search_from)) is not None:
        start = run.start()
        quotes += body.count(b'"', scanned, start)
        scanned = start
        if quotes % 2:  # inside a string
            search_from = run.end()
            continue
        found = _numeric_array(body, start, charge)
        if found is None:
            search_from = run.end()
            continue
        array, end = found
        pieces.append(body[position:start])
        placeholder = b'["\\u0000confserve-array",%d]' % len(found_arrays)
        pieces.append(placeholder)
        found_arrays.append(array)
        written = sum(map(len, pieces))
        shifts.append((written, end - written))
        position = search_from = scanned = end
    if not found_arrays:
        charge(tree_bytes(body), "parsing the JSON body")
        return loads(body)
    pieces.append(body[position:])
    rest = b"".join(pieces)
    del pieces
    charge(tree_bytes(rest), "parsing the JSON body")
    try:
        value = loads(rest)
    except json.JSONDecodeError as exc:  # report the position in the body the client sent
        shift = next((delta for offset, delta in reversed(shifts) if exc.pos >= offset), 0)
        raise json.JSONDecodeError(exc.msg, "", exc.pos + shift) from None
    return _swap_in(value, found_arrays)


def _numeric_array(body: bytes, start: int, charge: Charge) -> tuple[npt.NDArray[Any], int] | None:
    """The array starting at `start` and where it ends, or None when the fast path does not take it."""
    inner = _inner_dims(body, start)
    if inner is None:
        return None
    element = _exact(inner)
    outer = re.compile(
        rb"\[" + _WS + rb"(?>" + element + rb")(?>" + _WS + rb"," + _WS + element + rb")*+" + _WS + rb"\]"
    )
    match = outer.match(body, start)
    if match is None:
        return None
    end = match.end()
    if _LONG_INTEGER.search(body, start, end):
        return None
    is_float = _FLOAT_MARKS.search(body, start, end) is not None
    if inner:
        per_row = sum(math.prod(inner[:k]) for k in range(len(inner)))  # brackets per top-level element
        rows = (body.count(b"[", start, end) - 1) // per_row
    else:
        rows = body.count(b",", start, end) + 1
    shape = (rows, *inner)
    count = math.prod(shape)
    dtype = np.dtype(np.float64 if is_float else np.int64)
    charge(count * dtype.itemsize, "a JSON array")
    out = np.empty(count, dtype=dtype)
    filled = 0
    chunk_start = start
    while chunk_start < end:
        chunk_end = (
            end
            if end - chunk_start <= CHUNK_BYTES
            else body.rfind(b",", chunk_start, chunk_start + CHUNK_BYTES)
        )
        if chunk_end <= chunk_start:
            chunk_end = end
        values = np.fromstring(body[chunk_start:chunk_end].translate(_STRIP), dtype=dtype, sep=",")
        out[filled : filled + values.size] = values
        filled += values.size
        chunk_start = chunk_end + 1
    if filled != count:  # pragma: no cover - the expression above admits only `count` numbers
        raise ValueError("numeric array parse mismatch")
    return out.reshape(shape), end


def _inner_dims(body: bytes, start: int) -> list[int] | None:
    """The lengths of the first element's arrays, level by level (the shape below the first dimension),
    or None for an empty array, a rank above MAX_FAST_RANK or text that is not a numeric array."""
    dims: list[int] = []
    position = start
    while True:
        position = _skip_ws(body, position + 1)  # past '['
        if position >= len(body):
            return None
        if body[position] != ord("["):
            break
        dims.append(0)
        if len(dims) >= MAX_FAST_RANK:
            return None
    # Count the elements of the first array at each level, innermost first, with unbounded expressions.
    rank = len(dims) + 1
    first = start
    opens = [first]
    for _ in range(rank - 1):
        opens.append(_skip_ws(body, opens[-1] + 1))
    for level in range(1, rank):
        length = _count_elements(body, opens[level], rank - level - 1)
        if not length:
            return None
        dims[level - 1] = length
    return dims


def _count_elements(body: bytes, start: int, depth_below: int) -> int:
    """Elements of the array at `start` whose elements are arrays nested `depth_below` deep (0: numbers);
    0 if it is empty or not such an array."""
    element = re.compile(_any(depth_below))
    separator = re.compile(_WS + rb"(,|\])" + _WS)
    position = _skip_ws(body, start + 1)
    count = 0
    while True:
        match = element.match(body, position)
        if match is None:
            return 0
        count += 1
        after = separator.match(body, match.end())
        if after is None:
            return 0
        if after.group(1) == b"]":
            return count
        position = after.end()


def _any(depth: int) -> bytes:
    """Numbers nested `depth` deep in arrays of any length (possessive)."""
    pattern = _NUMBER
    for _ in range(depth):
        pattern = (
            rb"\[" + _WS + rb"(?>" + pattern + rb")(?>" + _WS + rb"," + _WS + pattern + rb")*+" + _WS + rb"\]"
        )
    return pattern


def _exact(dims: list[int]) -> bytes:
    """Numbers nested in arrays of exactly these lengths, outermost first (possessive)."""
    pattern = _NUMBER
    for length in reversed(dims):
        repeat = rb"(?>" + _WS + rb"," + _WS + pattern + rb"){%d}+" % (length - 1) if length > 1 else b""
        pattern = rb"\[" + _WS + rb"(?>" + pattern + rb")" + repeat + _WS + rb"\]"
    return pattern


def _skip_ws(body: bytes, position: int) -> int:
    while position < len(body) and body[position] in b" \t\n\r":
        position += 1
    return position


def _swap_in(value: Any, arrays: list[npt.NDArray[Any]]) -> Any:
    """`value` with every placeholder replaced by its array (iteratively: the tree may be deep)."""

    def resolve(item: Any) -> Any:
        if isinstance(item, list) and len(item) == 2 and type(item[0]) is str and item[0] == _MARK:
            return arrays[item[1]]
        return item

    value = resolve(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for index, item in enumerate(node):
                node[index] = resolved = resolve(item)
                if resolved is item and isinstance(item, (list, dict)):
                    stack.append(item)
        elif isinstance(node, dict):
            for key, item in node.items():
                node[key] = resolved = resolve(item)
                if resolved is item and isinstance(item, (list, dict)):
                    stack.append(item)
    return value
