"""Gramine-compatible protected files (the format of `gramine-sgx-pf-crypt` and Gramine's encrypted
mounts), readable and writable outside an enclave. Depends on the standard library and `cryptography`
only.

It also holds the one writer of secret files (`write_private_file`: atomic, mode 0600 set before any
byte, no symlink followed, fsynced, an existing file refused unless asked), which every package may
use since this is the bottom layer.

Format version 1 is read and written by every Gramine from v1.3.1 to v1.9; version 2 only by v1.9+.
A file is bound to the normalised host path it will be opened under; opening it under another path fails.
"""

from confserve.pf._errors import (
    FormatError,
    IntegrityError,
    InvalidPathError,
    OutputIsInputError,
    PathMismatchError,
    PfError,
    TooLargeError,
    VersionError,
    WrapKeyError,
)
from confserve.pf._files import (
    TreeEntry,
    decrypt_bytes,
    decrypt_file,
    decrypt_tree,
    encrypt_bytes,
    encrypt_file,
    encrypt_tree,
    header_facts,
    is_protected,
    open_protected,
    read_protected,
    verify_file,
)
from confserve.pf._format import MAJOR_V1 as FORMAT_V1
from confserve.pf._format import MAJOR_V2 as FORMAT_V2
from confserve.pf._format import host_size
from confserve.pf._keys import WrapKey
from confserve.pf._output import atomic_output, write_private_file, write_public_file
from confserve.pf._paths import bind_path, normalize_path
from confserve.pf._reader import HeaderFacts, ProtectedFileReader
from confserve.pf._writer import ProtectedFileWriter

__all__ = [
    "FORMAT_V1",
    "FORMAT_V2",
    "FormatError",
    "HeaderFacts",
    "IntegrityError",
    "InvalidPathError",
    "OutputIsInputError",
    "PathMismatchError",
    "PfError",
    "ProtectedFileReader",
    "ProtectedFileWriter",
    "TooLargeError",
    "TreeEntry",
    "VersionError",
    "WrapKey",
    "WrapKeyError",
    "atomic_output",
    "bind_path",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_tree",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_tree",
    "header_facts",
    "host_size",
    "is_protected",
    "normalize_path",
    "open_protected",
    "read_protected",
    "verify_file",
    "write_private_file",
    "write_public_file",
]
