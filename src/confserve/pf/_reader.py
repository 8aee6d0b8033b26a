"""Reading a protected file: a seekable, read-only, file-like view of its plaintext.

Theory of operation. Opening reads and authenticates the metadata node (docs/formats.md#pf-read): the magic
and version are checked, the metadata key is derived from the wrap key and the per-file nonce, and the
3884-byte header is decrypted under GCM, which authenticates the bound path, the plaintext size, the root MHT
node's key and tag, and the first 3 KiB of plaintext. Everything else is verified lazily on read: a data node
is decrypted with the key and tag found in its MHT node, which is itself authenticated through its ancestors
up to the root. Since every node key is random and every tag sits in the parent, a node swapped, replayed from
another file or reordered fails its tag. The host size must be exactly what the authenticated plaintext size
implies, so truncation and extension are caught at open.

Memory is bounded whatever the file size: a small LRU of MHT nodes, the last data node, and one reused
read buffer for the 96 data nodes of a group (384 KiB).

Speed: a large read is one read call per group and, per node, one AES-GCM call that decrypts straight
into the caller's buffer; the per-node Python work is kept to that loop (`_decrypt_whole_nodes`). Partial
nodes at either end of a read take the slower path that keeps the node's plaintext for the next read.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from confserve.pf._crypto import derive_metadata_key, gcm_decrypt
from confserve.pf._errors import FormatError, IntegrityError, PathMismatchError, TooLargeError, VersionError
from confserve.pf._format import (
    ATTACHED_DATA_NODES,
    CRYPTO_ENTRY_SIZE,
    ENCRYPTED_HEADER_OFFSET,
    FILE_ID,
    FLAG_HAS_PENDING_WRITE,
    FORMAT_VERSIONS,
    HDR_OFF_DATA,
    HDR_OFF_PATH,
    HDR_OFF_ROOT_KEY,
    HDR_OFF_ROOT_MAC,
    HDR_OFF_SIZE,
    HEADER_SIZE,
    IV,
    KDF_NONCE_SIZE,
    KEY_SIZE,
    MAC_SIZE,
    MAJOR_V2,
    MD_USER_DATA_SIZE,
    MHT_OFF_CHILDREN,
    MINOR_VERSION,
    NODE_SIZE,
    OFF_FILE_ID,
    OFF_FLAGS_V2,
    OFF_MAJOR,
    OFF_META_MAC,
    OFF_MINOR,
    OFF_NONCE,
    PATH_MAX_SIZE,
    SIZE_STRUCT,
    data_node_count,
    data_node_physical,
    host_size,
    mht_node_physical,
    mht_parent,
)
from confserve.pf._keys import WrapKey
from confserve.pf._paths import bind_path, normalize_path

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["HeaderFacts", "ProtectedFileReader", "read_header_facts"]

_MHT_CACHE_NODES: Final = 64  # 256 KiB of MHT plaintext; a sequential read needs depth+1 of them
_TAMPERED: Final = "protected file failed authentication (wrong key or modified)"


class _ReadsInto(Protocol):
    """What the reader needs beyond BinaryIO: files, BytesIO and raw files all have it."""

    def readinto(self, buffer: WriteableBuffer, /) -> int | None: ...


class HeaderFacts:
    """What the plain (unencrypted) part of the metadata node says; no key needed, nothing authenticated."""

    __slots__ = ("feature_flags", "host_size", "major_version", "minor_version")

    def __init__(self, major_version: int, minor_version: int, feature_flags: int, host_size: int) -> None:
        self.major_version = major_version
        self.minor_version = minor_version
        self.feature_flags = feature_flags
        self.host_size = host_size


def _read_exact_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise IntegrityError("protected file is truncated")
    return data


def _host_size_of(f: BinaryIO) -> int:
    return f.seek(0, io.SEEK_END)


def read_header_facts(f: BinaryIO) -> HeaderFacts:
    """Check the magic, size and version of the metadata node and return its plain facts."""
    size = _host_size_of(f)
    if size == 0 or size % NODE_SIZE:
        raise FormatError(f"not a protected file: size {size} is not a non-zero multiple of {NODE_SIZE}")
    f.seek(0)
    head = f.read(OFF_FLAGS_V2 + 1)
    if len(head) != OFF_FLAGS_V2 + 1 or head[OFF_FILE_ID : OFF_FILE_ID + 8] != FILE_ID:
        raise FormatError("not a protected file: no GRAFS_PF magic")
    major = head[OFF_MAJOR]
    if major not in FORMAT_VERSIONS:
        raise VersionError(f"unknown protected-file format version {major} (known: 1 and 2)")
    if head[OFF_MINOR] != MINOR_VERSION:
        raise VersionError(f"unknown protected-file minor version {head[OFF_MINOR]} (known: 0)")
    flags = head[OFF_FLAGS_V2] if major == MAJOR_V2 else 0
    return HeaderFacts(major, head[OFF_MINOR], flags, size)


class ProtectedFileReader(io.RawIOBase):
    """Plaintext view of a protected file. `bound_path` None skips the path check (pf-crypt without -V)."""

    def __init__(
        self, f: BinaryIO, key: WrapKey, *, bound_path: str | None, close_file: bool = False
    ) -> None:
        super().__init__()
        self._f = f
        self._close_file = close_file
        self._pos = 0
        self._mht_cache: OrderedDict[int, bytes] = OrderedDict()
        self._last_node: tuple[int, bytes] | None = None
        self._raw = bytearray(ATTACHED_DATA_NODES * NODE_SIZE)  # ciphertext of up to one group
        self._scratch = bytearray(NODE_SIZE + MAC_SIZE)  # one node's ciphertext || tag
        facts = read_header_facts(f)
        if facts.feature_flags & FLAG_HAS_PENDING_WRITE:
            raise FormatError("protected file has a pending write from a crash; it needs Gramine's recovery")
        if facts.feature_flags & ~FLAG_HAS_PENDING_WRITE:
            raise FormatError(f"protected file has unknown feature flags 0x{facts.feature_flags:02x}")
        self.format_version = facts.major_version
        node0 = _read_exact_at(f, 0, NODE_SIZE)
        nonce = node0[OFF_NONCE : OFF_NONCE + KDF_NONCE_SIZE]
        tag = node0[OFF_META_MAC : OFF_META_MAC + 16]
        off = ENCRYPTED_HEADER_OFFSET[facts.major_version]
        meta_key = derive_metadata_key(key.raw(), nonce)
        header = gcm_decrypt(meta_key, node0[off : off + HEADER_SIZE] + tag)

        path_field = header[HDR_OFF_PATH : HDR_OFF_PATH + PATH_MAX_SIZE]
        nul = path_field.find(0)
        if nul < 0:
            raise FormatError("protected file header has no NUL-terminated path")
        stored = path_field[:nul]
        self.stored_path = stored.decode("utf-8", errors="replace")
        if bound_path is not None:
            expected = bind_path(bound_path)
            if stored != expected:
                raise PathMismatchError(
                    expected.decode(),
                    self.stored_path,
                    stored_is_normalized=normalize_path(self.stored_path) == self.stored_path,
                )
        self.size: int = SIZE_STRUCT.unpack_from(header, HDR_OFF_SIZE)[0]
        expected_host = host_size(self.size)
        if facts.host_size < expected_host:
            raise IntegrityError(
                f"protected file is truncated: {facts.host_size} bytes on disk, {expected_host} expected"
            )
        if facts.host_size > expected_host:
            raise IntegrityError(
                f"protected file is extended: {facts.host_size} bytes on disk, {expected_host} expected"
            )
        self._head = header[HDR_OFF_DATA : HDR_OFF_DATA + min(self.size, MD_USER_DATA_SIZE)]
        self._root = (
            header[HDR_OFF_ROOT_KEY : HDR_OFF_ROOT_KEY + KEY_SIZE]
            + header[HDR_OFF_ROOT_MAC : HDR_OFF_ROOT_MAC + 16]
        )

    # -- io.RawIOBase ------------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(max(0, min(size, self.size - self._pos)))  # never more than the file holds
        return bytes(out[: self.readinto(out)])

    def readall(self) -> bytes:
        return bytes(self.read_remaining())

    def read_remaining(self) -> bytearray:
        """Everything from the current position to the end, in a buffer the caller may wipe.

        The size comes from the authenticated header and matches the file's size on disk, but a sparse
        file costs its writer nothing: before allocating, the last data node is authenticated (with the
        MHT nodes above it), so a size is backed by real ciphertext at its end. A size that still does
        not fit in memory is a TooLargeError, never a MemoryError.
        """
        self._check_open()
        self._authenticate_last_node()
        try:
            out = bytearray(max(0, self.size - self._pos))
        except MemoryError:
            raise TooLargeError(f"protected file of {self.size} bytes does not fit in memory") from None
        self.readinto(out)
        return out

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._check_open()
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self.size - self._pos))
        done = 0
        if n and self._pos < MD_USER_DATA_SIZE:
            done = min(n, MD_USER_DATA_SIZE - self._pos)
            out[:done] = self._head[self._pos : self._pos + done]
        while done < n:
            done += self._read_group_into(out, self._pos + done, n - done, done)
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._mht_cache.clear()
            self._last_node = None
            if self._close_file:
                self._f.close()
        super().close()

    # -- internals ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed protected file")

    def _authenticate_last_node(self) -> None:
        """Decrypt the last data node (kept as `_last_node`): an IntegrityError if it is not genuine."""
        count = data_node_count(self.size)
        if count == 0 or (self._last_node is not None and self._last_node[0] == count - 1):
            return
        last = count - 1
        mht = memoryview(self._mht(last // ATTACHED_DATA_NODES))
        entry = (last % ATTACHED_DATA_NODES) * CRYPTO_ENTRY_SIZE
        raw = self._read_nodes(data_node_physical(last), 1)
        self._last_node = (last, self._decrypt_node(raw, mht[entry : entry + CRYPTO_ENTRY_SIZE]))

    def _read_group_into(self, out: memoryview, pos: int, want: int, out_off: int) -> int:
        """Decrypt plaintext [pos, pos+want) as far as the current group reaches; return bytes done."""
        first = (pos - MD_USER_DATA_SIZE) // NODE_SIZE
        inner = (pos - MD_USER_DATA_SIZE) % NODE_SIZE
        last = (pos + want - 1 - MD_USER_DATA_SIZE) // NODE_SIZE
        group = first // ATTACHED_DATA_NODES
        last = min(last, (group + 1) * ATTACHED_DATA_NODES - 1)
        count = last - first + 1
        if count == 1 and self._last_node is not None and self._last_node[0] == first:
            size = min(NODE_SIZE - inner, want)
            out[out_off : out_off + size] = self._last_node[1][inner : inner + size]
            return size
        raw = self._read_nodes(data_node_physical(first), count)
        mht = memoryview(self._mht(group))
        entry = (first % ATTACHED_DATA_NODES) * CRYPTO_ENTRY_SIZE
        done = 0
        if inner or want < NODE_SIZE:  # a leading partial node
            size = min(NODE_SIZE - inner, want)
            plain = self._decrypt_node(raw[:NODE_SIZE], mht[entry : entry + CRYPTO_ENTRY_SIZE])
            self._last_node = (first, plain)
            out[out_off : out_off + size] = plain[inner : inner + size]
            done = size
            first += 1
            count -= 1
            entry += CRYPTO_ENTRY_SIZE
            raw = raw[NODE_SIZE:]
        whole = min(count, (want - done) // NODE_SIZE)
        self._decrypt_whole_nodes(
            raw, mht, entry, whole, out[out_off + done : out_off + done + whole * NODE_SIZE]
        )
        done += whole * NODE_SIZE
        if whole < count:  # a trailing partial node
            size = want - done
            plain = self._decrypt_node(
                raw[whole * NODE_SIZE : (whole + 1) * NODE_SIZE],
                mht[entry + whole * CRYPTO_ENTRY_SIZE : entry + (whole + 1) * CRYPTO_ENTRY_SIZE],
            )
            self._last_node = (first + whole, plain)
            out[out_off + done : out_off + done + size] = plain[:size]
            done += size
        return done

    def _decrypt_whole_nodes(
        self, raw: memoryview, mht: memoryview, entry: int, count: int, out: memoryview
    ) -> None:
        """Decrypt `count` consecutive data nodes straight into `out` (the hot loop of a large read).

        Each node's ciphertext and its tag from the MHT entry are put side by side in one scratch buffer
        (the AEAD API takes them joined); GCM checks the tag before `decrypt_into` returns, and on a failure
        the node's part of `out` is wiped, so no unauthenticated plaintext is ever left in `out`.
        """
        scratch = self._scratch
        off = 0
        try:
            for _ in range(count):
                scratch[:NODE_SIZE] = raw[off : off + NODE_SIZE]
                scratch[NODE_SIZE:] = mht[entry + KEY_SIZE : entry + CRYPTO_ENTRY_SIZE]
                AESGCM(mht[entry : entry + KEY_SIZE]).decrypt_into(
                    IV, scratch, None, out[off : off + NODE_SIZE]
                )
                off += NODE_SIZE
                entry += CRYPTO_ENTRY_SIZE
        except InvalidTag:
            out[off : off + NODE_SIZE] = bytes(NODE_SIZE)
            raise IntegrityError(_TAMPERED) from None

    def _decrypt_node(self, ciphertext: memoryview, crypto_entry: memoryview) -> bytes:
        """One data node's plaintext, authenticated with the key and tag of its MHT entry."""
        return gcm_decrypt(bytes(crypto_entry[:KEY_SIZE]), bytes(ciphertext) + crypto_entry[KEY_SIZE:])

    def _read_nodes(self, physical: int, count: int) -> memoryview:
        """`count` consecutive nodes from physical node `physical`, read into the reused buffer."""
        view = memoryview(self._raw)[: count * NODE_SIZE]
        self._f.seek(physical * NODE_SIZE)
        got = 0
        while got < len(view):
            n = cast("_ReadsInto", self._f).readinto(view[got:])
            if not n:
                raise IntegrityError("protected file is truncated")
            got += n
        return view

    def _mht(self, m: int) -> bytes:
        node = self._mht_cache.get(m)
        if node is not None:
            self._mht_cache.move_to_end(m)
            return node
        if m == 0:
            entry = self._root
        else:
            parent, index = mht_parent(m)
            off = MHT_OFF_CHILDREN + index * CRYPTO_ENTRY_SIZE
            entry = self._mht(parent)[off : off + CRYPTO_ENTRY_SIZE]
        ct = _read_exact_at(self._f, mht_node_physical(m) * NODE_SIZE, NODE_SIZE)
        node = gcm_decrypt(entry[:KEY_SIZE], ct + entry[KEY_SIZE:])
        self._mht_cache[m] = node
        if len(self._mht_cache) > _MHT_CACHE_NODES:
            self._mht_cache.popitem(last=False)
        return node
