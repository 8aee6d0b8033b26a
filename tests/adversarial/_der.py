"""A minimal DER reader and writer for the certificate fuzzer: parse into a tree, change one node's
content, write it back with every enclosing length fixed. Only what X.509 certificates use (single-byte
tags, definite lengths)."""

from __future__ import annotations

from dataclasses import dataclass, field

CONSTRUCTED = 0x20


@dataclass
class Node:
    tag: int
    content: bytes = b""
    children: list[Node] = field(default_factory=list)

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    def encode(self) -> bytes:
        body = b"".join(child.encode() for child in self.children) if self.constructed else self.content
        return bytes((self.tag,)) + encode_length(len(body)) + body


def encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def _read(data: bytes, offset: int) -> tuple[Node, int]:
    tag = data[offset]
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    body = data[pos : pos + length]
    if len(body) != length:
        raise ValueError("truncated DER")
    node = Node(tag)
    if node.constructed:
        inner = 0
        while inner < length:
            child, inner = _read(body, inner)
            node.children.append(child)
    else:
        node.content = body
    return node, pos + length


def parse(data: bytes) -> Node:
    node, end = _read(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after DER")
    return node


def leaves(node: Node, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Node]]:
    """Every primitive node with its path of child indices."""
    if not node.constructed:
        return [(path, node)]
    found = []
    for index, child in enumerate(node.children):
        found += leaves(child, (*path, index))
    return found
