"""Shared pieces of the adversarial suite: budgets, seeds, byte mutations and the leak check.

Every fuzzer draws from a `random.Random` seeded with a fixed number (CONFSERVE_ADVERSARIAL_SEED adds an
offset to explore other cases) and runs a bounded number of cases: `Budget.cases(short, long)` picks the
short count in a normal run and the long one with `pytest --long` or CONFSERVE_ADVERSARIAL_LONG=1.
A failure message always carries the seed and the case's description, so it can be replayed.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SEED_OFFSET: Final = int(os.environ.get("CONFSERVE_ADVERSARIAL_SEED", "0"))
INTERESTING_BYTES: Final = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


@dataclass(frozen=True)
class Budget:
    long: bool

    def cases(self, short: int, long: int) -> int:
        return long if self.long else short


def rng_for(name: str, seed: int) -> random.Random:
    """A generator per fuzzer: the same cases on every run unless CONFSERVE_ADVERSARIAL_SEED is set."""
    return random.Random(f"{name}:{seed + SEED_OFFSET}")


@dataclass(frozen=True)
class Mutation:
    """A mutated copy of some bytes, what was done, and which offsets of the original it touched.

    `touched` is a half-open range of original offsets whose bytes changed meaning (a flip, an insertion
    point, the start of a truncation to the end); `shifts` says whether later bytes moved."""

    data: bytes
    description: str
    touched: tuple[int, int]
    shifts: bool = False

    def within(self, start: int, end: int) -> bool:
        """Whether every change lies inside [start, end) and nothing after it moved."""
        lo, hi = self.touched
        return start <= lo and hi <= end and (not self.shifts or end >= self.original_length)

    original_length: int = field(default=0, compare=False)


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def _flip(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    pos = rng.randrange(len(data))
    out = bytearray(data)
    out[pos] ^= 1 << rng.randrange(8)
    return Mutation(bytes(out), f"flip bit at {pos}", (pos, pos + 1), original_length=len(data))


def _set_byte(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    pos, value = rng.randrange(len(data)), rng.choice(INTERESTING_BYTES)
    out = bytearray(data)
    out[pos] = value
    return Mutation(bytes(out), f"set byte {pos} to {value:#x}", (pos, pos + 1), original_length=len(data))


def _truncate(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    n = len(data)
    pos = rng.choice([rng.randrange(n), n - 1, (n - 1) // block * block if block else n // 2])
    return Mutation(data[:pos], f"truncate to {pos}", (pos, n), shifts=True, original_length=n)


def _extend(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    extra = _random_bytes(rng, rng.choice([1, 16, block or 64]))
    n = len(data)
    return Mutation(data + extra, f"append {len(extra)} bytes", (n, n), shifts=True, original_length=n)


def _delete(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    n = len(data)
    pos = rng.randrange(n)
    size = rng.randint(1, min(64, n - pos))
    out = data[:pos] + data[pos + size :]
    return Mutation(out, f"delete {size} at {pos}", (pos, n), shifts=True, original_length=n)


def _insert(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    n = len(data)
    pos = rng.randrange(n + 1)
    extra = _random_bytes(rng, rng.randint(1, 16))
    out = data[:pos] + extra + data[pos:]
    return Mutation(out, f"insert {len(extra)} at {pos}", (pos, n), shifts=True, original_length=n)


def _duplicate(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    n = len(data)
    pos = rng.randrange(n)
    size = rng.randint(1, min(64, n - pos))
    out = data[:pos] + data[pos : pos + size] + data[pos:]
    return Mutation(out, f"duplicate {size} at {pos}", (pos, n), shifts=True, original_length=n)


def _swap_blocks(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    a, b = sorted(rng.sample(range(len(data) // block), 2))
    out = bytearray(data)
    out[a * block : (a + 1) * block] = data[b * block : (b + 1) * block]
    out[b * block : (b + 1) * block] = data[a * block : (a + 1) * block]
    span = (a * block, (b + 1) * block)
    return Mutation(bytes(out), f"swap blocks {a} and {b}", span, original_length=len(data))


def _drop_block(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    n = len(data)
    k = rng.randrange(n // block)
    out = data[: k * block] + data[(k + 1) * block :]
    return Mutation(out, f"drop block {k}", (k * block, n), shifts=True, original_length=n)


def _duplicate_block(data: bytes, rng: random.Random, block: int) -> Mutation | None:
    n = len(data)
    k = rng.randrange(n // block)
    out = data[: (k + 1) * block] + data[k * block :]
    return Mutation(out, f"duplicate block {k}", (k * block, n), shifts=True, original_length=n)


_BYTE_OPS: Final = (_flip, _flip, _flip, _set_byte, _truncate, _extend, _delete, _insert, _duplicate)
_BLOCK_OPS: Final = (_swap_blocks, _drop_block, _duplicate_block)


def mutate(data: bytes, rng: random.Random, *, block: int = 0) -> Mutation:
    """One random structural or byte-level mutation of `data` (never returns `data` unchanged).

    With `block` > 0, block-level operations (swap, duplicate, drop a whole block) are among the choices:
    protected files are 4096-byte nodes, and moving whole nodes is the attack the format must catch.
    """
    ops = _BYTE_OPS + (_BLOCK_OPS if block and len(data) >= 2 * block else ()) if data else (_extend,)
    while True:
        result = rng.choice(ops)(data, rng, block)
        if result is not None and result.data != data:
            return result


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` cut into 1..8 random pieces (a peer's bytes arrive in any chunking)."""
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 7))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def find_markers(markers: Iterable[bytes], files: Sequence[Path], streams: Sequence[bytes] = ()) -> list[str]:
    """Where any marker (as given or spelled in hex) occurs in `files` or captured `streams`."""
    spellings = []
    for marker in markers:
        spellings += [marker, marker.hex().encode()]
    found = []
    for path in files:
        content = path.read_bytes() if path.exists() else b""
        found += [f"{path}: {s!r}" for s in spellings if s in content]
    for index, content in enumerate(streams):
        found += [f"stream {index}: {s!r}" for s in spellings if s in content]
    return found
