"""Writing a protected file that every Gramine version of the chosen format reads
(docs/formats.md#pf-write).

Theory of operation. Plaintext arrives as a stream. The first 3 KiB stay in memory for the header;
every further 4096 bytes become a data node, encrypted at once under a fresh random key into the buffer
of the current *group* (an MHT node and its 96 data nodes, contiguous on disk), with the key and tag
entered in that group's MHT node. When a group is full it is written in one call, its MHT node
encrypted under a fresh key, and the MHT node's (key, tag) is remembered: 32 bytes per 96 data nodes.

An MHT node also holds the (key, tag) of its up to 32 child MHT nodes, which are written later in the
stream. So at close, the MHT nodes that have children (one in 32) are read back, authenticated, completed
with their children's entries and re-encrypted under fresh keys, children before parents; the root's
entry goes into the header, which is encrypted under the key derived from the wrap key and a fresh
nonce. Memory: two group buffers' worth (776 KiB) plus 32 bytes per 384 KiB of plaintext.

Closing an unfinished writer after an error (`abort`) never finalises: no header is written, so the
output is not a readable protected file.

Randomness. Every node key and the header's KDF nonce come from `random_bytes(n)` (default
`secrets.token_bytes`), drawn in this order, which is part of the seam's contract: for each group, its
data nodes' keys in order, then its MHT node's key; at close, a new key for each MHT node that has
children, highest number first; last, the 32-byte nonce. Each node ends up encrypted under the last key
drawn for it, and that key is stored in its parent (the root's in the header), so with the wrap key
every value drawn is readable from the file: a test replays the values of a file Gramine wrote and
gets Gramine's bytes back exactly (tests/interop/test_gramine_pf_vectors.py). Anything but
`secrets.token_bytes` belongs in tests: a predictable source makes predictable keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from confserve.pf._crypto import derive_metadata_key, gcm_decrypt, gcm_encrypt
from confserve.pf._errors import PfError
from confserve.pf._format import (
    ATTACHED_DATA_NODES,
    CHILD_MHT_NODES,
    CRYPTO_ENTRY_SIZE,
    ENCRYPTED_HEADER_OFFSET,
    FILE_ID,
    FORMAT_VERSIONS,
    GROUP_NODES,
    HDR_OFF_DATA,
    HDR_OFF_ROOT_KEY,
    HDR_OFF_SIZE,
    HEADER_SIZE,
    IV,
    KDF_NONCE_SIZE,
    KEY_SIZE,
    MAJOR_V1,
    MD_USER_DATA_SIZE,
    MHT_OFF_CHILDREN,
    MINOR_VERSION,
    NODE_SIZE,
    OFF_FILE_ID,
    OFF_MAJOR,
    OFF_META_MAC,
    OFF_MINOR,
    OFF_NONCE,
    SIZE_STRUCT,
    host_size,
    mht_node_physical,
)
from confserve.pf._keys import WrapKey
from confserve.pf._paths import bind_path

if TYPE_CHECKING:
    from types import TracebackType

    from _typeshed import ReadableBuffer

__all__ = ["ProtectedFileWriter"]

_GROUP_BYTES: Final = GROUP_NODES * NODE_SIZE


class ProtectedFileWriter:
    """Streams plaintext into a protected file. `f` must be readable, writable and seekable.

    Use as a context manager: a clean exit finalises the file, an exception aborts it. `random_bytes`
    supplies node keys and the nonce (see the module's docstring); leave it alone outside tests.
    """

    def __init__(
        self,
        f: BinaryIO,
        key: WrapKey,
        *,
        bound_path: str,
        format_version: int = MAJOR_V1,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if format_version not in FORMAT_VERSIONS:
            raise PfError(f"cannot write protected-file format version {format_version} (1 or 2)")
        self._path = bind_path(bound_path)
        self._random_bytes = random_bytes
        self._f = f
        self._key = key
        self._version = format_version
        self.size = 0
        self._head = bytearray(MD_USER_DATA_SIZE)
        self._node = bytearray(NODE_SIZE)  # partial data node being filled
        self._fill = 0
        self._data_nodes = 0  # data nodes encrypted so far
        # Group buffer: slot 0 is the MHT node, slots 1..96 its data nodes; 16 spare bytes let a data
        # node's ciphertext||tag be encrypted in place (the tag spills into the next slot, then moves).
        self._group = bytearray(_GROUP_BYTES + 16)
        self._mht = bytearray(NODE_SIZE)
        self._in_group = 0
        self._mht_entries = bytearray()  # (key||tag) of every MHT node written, indexed by MHT number
        self._state = "open"

    def _random(self, size: int) -> bytes:
        value = self._random_bytes(size)
        if not isinstance(value, bytes) or len(value) != size:
            raise PfError(f"the random source gave something else than the {size} bytes asked for")
        return value

    # -- writing ----------------------------------------------------------------------------------
    def write(self, data: ReadableBuffer) -> int:
        if self._state != "open":
            raise ValueError(f"write to a {self._state} protected-file writer")
        mv = memoryview(data).cast("B")
        n = len(mv)
        i = 0
        if self.size < MD_USER_DATA_SIZE:
            i = min(n, MD_USER_DATA_SIZE - self.size)
            self._head[self.size : self.size + i] = mv[:i]
            self.size += i
        while i < n:
            if self._fill == 0 and n - i >= NODE_SIZE:
                self._emit_data_node(mv[i : i + NODE_SIZE])
                i += NODE_SIZE
                self.size += NODE_SIZE
                continue
            k = min(NODE_SIZE - self._fill, n - i)
            self._node[self._fill : self._fill + k] = mv[i : i + k]
            self._fill += k
            i += k
            self.size += k
            if self._fill == NODE_SIZE:
                self._emit_data_node(self._node)
                self._fill = 0
        return n

    def _emit_data_node(self, plaintext: bytearray | memoryview) -> None:
        slot = 1 + self._in_group
        key = self._random(KEY_SIZE)
        start = slot * NODE_SIZE
        AESGCM(key).encrypt_into(IV, plaintext, None, memoryview(self._group)[start : start + NODE_SIZE + 16])
        entry = self._in_group * CRYPTO_ENTRY_SIZE
        self._mht[entry : entry + KEY_SIZE] = key
        self._mht[entry + KEY_SIZE : entry + CRYPTO_ENTRY_SIZE] = self._group[
            start + NODE_SIZE : start + NODE_SIZE + 16
        ]
        self._data_nodes += 1
        self._in_group += 1
        if self._in_group == ATTACHED_DATA_NODES:
            self._flush_group()

    def _flush_group(self) -> None:
        m = len(self._mht_entries) // CRYPTO_ENTRY_SIZE
        key = self._random(KEY_SIZE)
        sealed = gcm_encrypt(key, self._mht)
        self._group[:NODE_SIZE] = sealed[:NODE_SIZE]
        self._mht_entries += key + sealed[NODE_SIZE:]
        self._f.seek(mht_node_physical(m) * NODE_SIZE)
        self._f.write(memoryview(self._group)[: (1 + self._in_group) * NODE_SIZE])
        self._mht[:] = bytes(NODE_SIZE)
        self._in_group = 0

    # -- finishing --------------------------------------------------------------------------------
    def close(self) -> None:
        """Finalise: complete the hash tree, write the header, cut the file to its exact size."""
        if self._state != "open":
            return
        self._state = "closing"
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._wipe()
        self._state = "closed"

    def abort(self) -> None:
        """Stop without finalising; the output is left without a valid header."""
        self._wipe()
        self._state = "aborted"

    def _finish(self) -> None:
        if self._fill:
            self._node[self._fill :] = bytes(NODE_SIZE - self._fill)
            self._emit_data_node(self._node)
        if self._in_group:
            self._flush_group()
        count = len(self._mht_entries) // CRYPTO_ENTRY_SIZE
        # MHT nodes with children: m such that 32m + 1 < count. Children have higher numbers, so a
        # descending walk completes every child before its parent.
        for m in range((count - 2) // CHILD_MHT_NODES, -1, -1) if count > 1 else ():
            self._complete_mht(m, count)
        root = bytes(self._mht_entries[:CRYPTO_ENTRY_SIZE]) if count else bytes(CRYPTO_ENTRY_SIZE)

        header = bytearray(HEADER_SIZE)
        header[: len(self._path)] = self._path
        SIZE_STRUCT.pack_into(header, HDR_OFF_SIZE, self.size)
        header[HDR_OFF_ROOT_KEY : HDR_OFF_ROOT_KEY + CRYPTO_ENTRY_SIZE] = root
        header[HDR_OFF_DATA : HDR_OFF_DATA + MD_USER_DATA_SIZE] = self._head
        nonce = self._random(KDF_NONCE_SIZE)
        sealed = gcm_encrypt(derive_metadata_key(self._key.raw(), nonce), header)
        header[:] = bytes(HEADER_SIZE)
        node0 = bytearray(NODE_SIZE)
        node0[OFF_FILE_ID : OFF_FILE_ID + 8] = FILE_ID
        node0[OFF_MAJOR] = self._version
        node0[OFF_MINOR] = MINOR_VERSION
        node0[OFF_NONCE : OFF_NONCE + KDF_NONCE_SIZE] = nonce
        node0[OFF_META_MAC : OFF_META_MAC + 16] = sealed[HEADER_SIZE:]
        # v2: the flags byte at 58 stays 0 (docs/formats.md#pf-metadata-node)
        off = ENCRYPTED_HEADER_OFFSET[self._version]
        node0[off : off + HEADER_SIZE] = sealed[:HEADER_SIZE]
        self._f.seek(0)
        self._f.write(node0)
        self._f.truncate(host_size(self.size))
        self._f.flush()

    def _complete_mht(self, m: int, count: int) -> None:
        offset = mht_node_physical(m) * NODE_SIZE
        self._f.seek(offset)
        ct = self._f.read(NODE_SIZE)
        entry = self._mht_entries[m * CRYPTO_ENTRY_SIZE : (m + 1) * CRYPTO_ENTRY_SIZE]
        node = bytearray(gcm_decrypt(bytes(entry[:KEY_SIZE]), ct + entry[KEY_SIZE:]))
        first_child = CHILD_MHT_NODES * m + 1
        children = min(count, first_child + CHILD_MHT_NODES) - first_child
        src = first_child * CRYPTO_ENTRY_SIZE
        node[MHT_OFF_CHILDREN : MHT_OFF_CHILDREN + children * CRYPTO_ENTRY_SIZE] = self._mht_entries[
            src : src + children * CRYPTO_ENTRY_SIZE
        ]
        key = self._random(KEY_SIZE)
        sealed = gcm_encrypt(key, node)
        node[:] = bytes(NODE_SIZE)
        self._f.seek(offset)
        self._f.write(sealed[:NODE_SIZE])
        self._mht_entries[m * CRYPTO_ENTRY_SIZE : (m + 1) * CRYPTO_ENTRY_SIZE] = key + sealed[NODE_SIZE:]

    def _wipe(self) -> None:
        for buf in (self._head, self._node, self._group, self._mht, self._mht_entries):
            buf[:] = bytes(len(buf))

    def __enter__(self) -> ProtectedFileWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
