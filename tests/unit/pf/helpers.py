"""Helpers for the protected-file tests."""

from __future__ import annotations

import hashlib


def vector_plaintext(size: int) -> bytes:
    """The plaintext of the Gramine vectors: SHA-256(b"confserve-pf-vector" + i as u64 LE), cut to size."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"confserve-pf-vector" + i.to_bytes(8, "little")).digest()
        i += 1
    return bytes(out[:size])
