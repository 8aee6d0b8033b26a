"""Whole files, bytes in memory and directory trees, built on the streaming reader and writer.

Outputs are written to a temporary file beside the target and renamed into place only when complete,
so a failure never leaves a partial output (in particular, never partial plaintext). An output that
would replace its own input (the same file under another spelling, a symlink or a hard link; for a tree,
a place inside the input tree) is refused before anything is written: decrypting a protected file onto
itself would swap the only encrypted copy for plaintext.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from confserve.files import open_input
from confserve.pf._errors import FormatError, OutputIsInputError, PfError, TooLargeError
from confserve.pf._format import MAJOR_V1, NODE_SIZE
from confserve.pf._keys import WrapKey
from confserve.pf._output import PRIVATE_MODE, PUBLIC_MODE, atomic_output
from confserve.pf._paths import normalize_path
from confserve.pf._reader import HeaderFacts, ProtectedFileReader, read_header_facts
from confserve.pf._writer import ProtectedFileWriter

__all__ = [
    "TreeEntry",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_tree",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_tree",
    "header_facts",
    "is_protected",
    "open_protected",
    "read_protected",
    "verify_file",
]

_CHUNK: Final = 97 * NODE_SIZE * 4  # four groups per call: large enough to amortise per-call overhead
StrPath = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One file of a directory tree: its path relative to the tree root and the path it is bound to."""

    relative_path: str
    bound_path: str
    size: int


def open_protected(path: StrPath, key: WrapKey, *, bound_path: str | None) -> ProtectedFileReader:
    """Open a protected file for reading (the reader owns and closes the file)."""
    f = open_input(path)  # a regular file only: a FIFO or device is refused, never waited on
    try:
        return ProtectedFileReader(f, key, bound_path=bound_path, close_file=True)
    except BaseException:
        f.close()
        raise


def read_protected(
    path: StrPath, key: WrapKey, *, bound_path: str | None, max_size: int | None = None
) -> bytearray:
    """Decrypt a whole protected file into memory (nothing touches disk). The caller may wipe the result.

    A plaintext over `max_size` bytes (or over what memory holds) is a TooLargeError, before allocating.
    """
    with open_protected(path, key, bound_path=bound_path) as reader:
        if max_size is not None and reader.size > max_size:
            raise TooLargeError(f"protected file holds {reader.size} bytes, more than {max_size} allowed")
        return reader.read_remaining()


def decrypt_bytes(data: bytes, key: WrapKey, *, bound_path: str | None) -> bytearray:
    """Decrypt a protected file held in memory."""
    with ProtectedFileReader(io.BytesIO(data), key, bound_path=bound_path) as reader:
        return reader.read_remaining()


def encrypt_bytes(data: bytes, key: WrapKey, *, bound_path: str, format_version: int = MAJOR_V1) -> bytes:
    """Encrypt plaintext held in memory into protected-file bytes."""
    out = io.BytesIO()
    with ProtectedFileWriter(out, key, bound_path=bound_path, format_version=format_version) as w:
        w.write(data)
    return out.getvalue()


def header_facts(path: StrPath) -> HeaderFacts:
    """The plain facts of a protected file's metadata node (no key needed, nothing authenticated)."""
    with open_input(path) as f:
        return read_header_facts(f)


def is_protected(path: StrPath) -> bool:
    """Whether `path` looks like a protected file (magic, version and size check only)."""
    try:
        header_facts(path)
    except (FormatError, OSError):
        return False
    return True


def _file_id(path: StrPath) -> tuple[int, int] | None:
    """(device, inode) of what `path` names, following symlinks; None if nothing is there."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def _refuse_same_file(src: StrPath, dst: StrPath) -> None:
    dst_id = _file_id(dst)
    if dst_id is not None and dst_id == _file_id(src):
        raise OutputIsInputError(f"output {os.fspath(dst)!r} is the input file itself; name another output")


def _refuse_output_in_tree(src_dir: StrPath, dst_dir: StrPath, relative_paths: list[str]) -> None:
    """Refuse `dst_dir` equal to or inside `src_dir` (after resolving symlinks, so also through a link
    or a bind mount), and any output file that already is one of the input files."""
    src_id = _file_id(src_dir)
    resolved = Path(os.path.realpath(dst_dir))
    for candidate in (resolved, *resolved.parents):
        if src_id is not None and _file_id(candidate) == src_id:
            raise OutputIsInputError(
                f"output directory {os.fspath(dst_dir)!r} is, or is inside, the input directory "
                f"{os.fspath(src_dir)!r}; name an output outside it"
            )
    src, dst = Path(src_dir), Path(dst_dir)
    inputs = {_file_id(src / rel) for rel in relative_paths} - {None}
    for rel in relative_paths:
        if _file_id(dst / rel) in inputs:
            raise OutputIsInputError(
                f"output {os.fspath(dst / rel)!r} is one of the input files; name another output"
            )


def _copy(src: io.RawIOBase, dst: BinaryIO | ProtectedFileWriter) -> int:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    try:
        while n := src.readinto(view) or 0:
            dst.write(view[:n])
            total += n
    finally:
        buf[:] = bytes(len(buf))
    return total


def encrypt_file(
    src: StrPath, dst: StrPath, key: WrapKey, *, bound_path: str | None = None, format_version: int = MAJOR_V1
) -> str:
    """Encrypt file `src` to `dst`, bound to `bound_path` (default: `dst` as given, like pf-crypt).

    Returns the normalised path the file is bound to.
    """
    bound = normalize_path(os.fspath(dst) if bound_path is None else bound_path)
    _refuse_same_file(src, dst)
    with (
        open_input(src) as fin,
        atomic_output(dst, mode=PUBLIC_MODE, replace=True) as fout,
        ProtectedFileWriter(fout, key, bound_path=bound, format_version=format_version) as w,
    ):
        _copy(fin, w)
    return bound


def decrypt_file(src: StrPath, dst: StrPath, key: WrapKey, *, bound_path: str | None) -> int:
    """Decrypt `src` into `dst` (mode 0600). On any failure `dst` is not created. Returns the size."""
    _refuse_same_file(src, dst)
    with (
        open_protected(src, key, bound_path=bound_path) as reader,
        atomic_output(dst, mode=PRIVATE_MODE, replace=True) as out,
    ):
        return _copy(reader, out)


def verify_file(src: StrPath, key: WrapKey, *, bound_path: str | None) -> ProtectedFileReader:
    """Authenticate every node of `src` without writing anything; returns the (closed) reader's facts."""
    with open_protected(src, key, bound_path=bound_path) as reader:
        buf = bytearray(_CHUNK)
        try:
            while reader.readinto(buf):
                pass
        finally:
            buf[:] = bytes(len(buf))
    return reader


def _walk(root: Path) -> list[str]:
    """Regular files below `root`, as sorted POSIX relative paths; symlinks and special files refused."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise PfError(f"refusing to follow symbolic link {os.fspath(full)!r}")
            if stat.S_ISREG(st.st_mode):
                found.append(full.relative_to(root).as_posix())
            elif not stat.S_ISDIR(st.st_mode):
                raise PfError(f"not a regular file: {os.fspath(full)!r}")
    return sorted(found)


def _join_bound(root: str, rel: str) -> str:
    return normalize_path(f"{root}/{rel}")


def encrypt_tree(
    src_dir: StrPath,
    dst_dir: StrPath,
    key: WrapKey,
    *,
    bind_root: str | None = None,
    format_version: int = MAJOR_V1,
) -> list[TreeEntry]:
    """Encrypt every file below `src_dir` into the same layout below `dst_dir`.

    Each file is bound to `bind_root/<relative path>`, where `bind_root` is the host path the tree will
    be opened under in the enclave (the encrypted mount's URI); it defaults to `dst_dir` as given, as
    gramine-sgx-pf-crypt does in directory mode.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    root = os.fspath(dst_dir) if bind_root is None else bind_root
    entries: list[TreeEntry] = []
    relative_paths = _walk(src)
    _refuse_output_in_tree(src_dir, dst_dir, relative_paths)
    for rel in relative_paths:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        bound = encrypt_file(
            src / rel, target, key, bound_path=_join_bound(root, rel), format_version=format_version
        )
        entries.append(TreeEntry(rel, bound, (src / rel).stat().st_size))
    return entries


def decrypt_tree(
    src_dir: StrPath, dst_dir: StrPath, key: WrapKey, *, bind_root: str | None
) -> list[TreeEntry]:
    """Decrypt every file below `src_dir` into `dst_dir`; with `bind_root`, check each bound path.

    All or nothing: if any file fails, the files this call already wrote are removed again.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    written: list[Path] = []
    entries: list[TreeEntry] = []
    relative_paths = _walk(src)
    _refuse_output_in_tree(src_dir, dst_dir, relative_paths)
    try:
        for rel in relative_paths:
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            bound = None if bind_root is None else _join_bound(bind_root, rel)
            size = decrypt_file(src / rel, target, key, bound_path=bound)
            written.append(target)
            entries.append(TreeEntry(rel, bound or "", size))
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
    return entries
