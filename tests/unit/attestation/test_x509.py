"""key_usage: exactly the named keyUsage bits, and no bit it does not know."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509

from confserve.attestation import key_usage


def test_exactly_the_named_bits_are_set() -> None:
    assert key_usage("key_cert_sign", "crl_sign") == x509.KeyUsage(
        False, False, False, False, False, True, True, False, False
    )
    assert key_usage("digital_signature", "key_agreement") == x509.KeyUsage(
        True, False, False, False, True, False, False, False, False
    )
    assert key_usage() == x509.KeyUsage(False, False, False, False, False, False, False, False, False)


def test_an_unknown_bit_is_refused() -> None:
    bits: tuple[Any, ...] = ("digital_signature", "non_repudiation")
    with pytest.raises(ValueError, match="non_repudiation"):
        key_usage(*bits)
