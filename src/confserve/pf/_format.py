"""The protected-file format: constants, binary layouts and node geometry (docs/formats.md#pf).

A protected file is a sequence of 4096-byte nodes. Node 0 is the metadata node; when the plaintext is longer
than the 3072 bytes kept inside the metadata, node 1 is the root of a Merkle hash tree (MHT) and data nodes
follow, 96 of them after each MHT node. Every node is AES-128-GCM ciphertext under its own random key, with a
zero IV and no AAD; a node's key and tag live in its parent, the root's in the metadata header, whose key is
derived from the wrap key (docs/formats.md#pf-kdf). Layouts are (offset, size) tables.
"""

from __future__ import annotations

import struct
from typing import Final

NODE_SIZE: Final = 4096  # PF_NODE_SIZE
KEY_SIZE: Final = 16  # AES-128: PF_KEY_SIZE
# Every AES-GCM operation uses a zero IV, safe because keys are single-use (docs/formats.md#pf-node-keys).
IV: Final = bytes(12)
MAC_SIZE: Final = 16  # PF_MAC_SIZE
FILE_ID: Final = b"GRAFS_PF"  # PF_FILE_ID 0x46505f5346415247, little-endian on disk
MAJOR_V1: Final = 1  # written by Gramine v1.3.1 ... v1.8
MAJOR_V2: Final = 2  # written by Gramine v1.9+ (adds feature_flags)
MINOR_VERSION: Final = 0
FORMAT_VERSIONS: Final = (MAJOR_V1, MAJOR_V2)
FLAG_HAS_PENDING_WRITE: Final = 0x01  # v2 feature_flags bit 0: a crashed write awaits recovery
PATH_MAX_SIZE: Final = 772  # 260 + 512; the path is NUL-terminated, so at most 771 bytes
MD_USER_DATA_SIZE: Final = 3072  # first 3 KiB of plaintext, kept inside the encrypted header
ATTACHED_DATA_NODES: Final = 96  # data-node entries per MHT node
CHILD_MHT_NODES: Final = 32  # child-MHT entries per MHT node
CRYPTO_ENTRY_SIZE: Final = KEY_SIZE + MAC_SIZE  # gcm_crypto_data_t: key[16] || mac[16]
KDF_LABEL: Final = b"SGX-PROTECTED-FS-METADATA-KEY"
KDF_NONCE_SIZE: Final = 32

# Metadata node, plain part (docs/formats.md#pf-metadata-node). Offsets of the encrypted blob differ by one
# byte between versions.
#   offset size field
#   0      8    file_id "GRAFS_PF"
#   8      1    major_version
#   9      1    minor_version
#   10     32   metadata_key_nonce (KDF nonce)
#   42     16   metadata_mac (GCM tag of the encrypted header)
#   58     1    feature_flags (v2 only; not authenticated)
#   58/59  3884 encrypted header (v1 / v2)
OFF_FILE_ID: Final = 0
OFF_MAJOR: Final = 8
OFF_MINOR: Final = 9
OFF_NONCE: Final = 10
OFF_META_MAC: Final = 42
OFF_FLAGS_V2: Final = 58
ENCRYPTED_HEADER_OFFSET: Final = {MAJOR_V1: 58, MAJOR_V2: 59}

# Encrypted header, plaintext form (docs/formats.md#pf-header), 3884 bytes.
#   offset size field
#   0      772  file_path, NUL-terminated, zero-filled
#   772    8    file_size (u64 LE)
#   780    16   root_mht_node_key
#   796    16   root_mht_node_mac
#   812    3072 file_data: plaintext [0, min(S, 3072))
HDR_OFF_PATH: Final = 0
HDR_OFF_SIZE: Final = 772
HDR_OFF_ROOT_KEY: Final = 780
HDR_OFF_ROOT_MAC: Final = 796
HDR_OFF_DATA: Final = 812
HEADER_SIZE: Final = 3884
SIZE_STRUCT: Final = struct.Struct("<Q")

# MHT node plaintext (docs/formats.md#pf-mht): 96 data entries then 32 child-MHT entries, 32 bytes each.
MHT_OFF_CHILDREN: Final = ATTACHED_DATA_NODES * CRYPTO_ENTRY_SIZE  # 3072

# One "group" on disk is an MHT node followed by its 96 data nodes: physical nodes 1+97m .. 97+97m.
GROUP_NODES: Final = 1 + ATTACHED_DATA_NODES


def data_node_count(size: int) -> int:
    """D: the number of data nodes for `size` plaintext bytes."""
    return 0 if size <= MD_USER_DATA_SIZE else -(-(size - MD_USER_DATA_SIZE) // NODE_SIZE)


def mht_node_count(size: int) -> int:
    """M: the number of MHT nodes for `size` plaintext bytes."""
    d = data_node_count(size)
    return 0 if d == 0 else (d - 1) // ATTACHED_DATA_NODES + 1


def host_size(size: int) -> int:
    """Exact size on disk of a freshly written protected file with `size` plaintext bytes
    (docs/formats.md#pf-size)."""
    return NODE_SIZE * (1 + mht_node_count(size) + data_node_count(size))


def data_node_physical(d: int) -> int:
    """Physical node index of logical data node d."""
    return d + 2 + d // ATTACHED_DATA_NODES


def mht_node_physical(m: int) -> int:
    """Physical node index of logical MHT node m (the root, m = 0, is physical node 1)."""
    return 1 + GROUP_NODES * m


def mht_parent(m: int) -> tuple[int, int]:
    """(parent MHT index, child entry index in the parent) of MHT node m >= 1."""
    return (m - 1) // CHILD_MHT_NODES, (m - 1) % CHILD_MHT_NODES
