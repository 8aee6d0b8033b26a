"""The two cryptographic operations of the format, on top of pyca/cryptography's OpenSSL backend."""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

from confserve.pf._errors import IntegrityError
from confserve.pf._format import IV, KDF_LABEL, KDF_NONCE_SIZE

# NIST SP 800-108 counter-mode KDF block (docs/formats.md#pf-kdf): counter u32 = 1 | label, NUL-padded to 64 |
# nonce[32] | output length in bits u32 = 128. One AES-CMAC block chain, no truncation.
_KDF_PREFIX = struct.pack("<I", 1) + KDF_LABEL.ljust(64, b"\0")
_KDF_SUFFIX = struct.pack("<I", 128)


def derive_metadata_key(wrap_key: bytes, nonce: bytes) -> bytes:
    """K_meta = AES-CMAC(wrap_key, KDF block(nonce))."""
    assert len(nonce) == KDF_NONCE_SIZE
    mac = CMAC(algorithms.AES(wrap_key))
    mac.update(_KDF_PREFIX + nonce + _KDF_SUFFIX)
    return mac.finalize()


def gcm_decrypt(key: bytes, ciphertext_and_tag: bytes | bytearray | memoryview) -> bytes:
    """AES-128-GCM with the format's zero IV and no AAD; any failure is an IntegrityError."""
    try:
        return AESGCM(key).decrypt(IV, ciphertext_and_tag, None)
    except InvalidTag:
        raise IntegrityError("protected file failed authentication (wrong key or modified)") from None


def gcm_encrypt(key: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
    """ciphertext || tag under a single-use key."""
    return AESGCM(key).encrypt(IV, plaintext, None)
