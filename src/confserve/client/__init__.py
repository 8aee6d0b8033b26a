"""A TF Serving client (gRPC or REST, one-way or mutual TLS), its server-attestation check, its input and
output helpers and its load generator.

Importing the package loads its errors and TLS settings only (standard library); the rest (numpy, the
protos, the attestation stack) loads on first use of a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confserve._lazy import lazy_exports
from confserve.client._errors import ClientError, RemoteError
from confserve.client._tls import ClientTls

if TYPE_CHECKING:
    from confserve.client._attest import AttestationCheck, AttestedServer, fetch_server_spki
    from confserve.client._display import as_json, describe
    from confserve.client._inputs import (
        check_inputs,
        inputs_from_image,
        inputs_from_json,
        inputs_from_npy,
        random_inputs,
    )
    from confserve.client._loadgen import LoadResult, LoadSpec, run_load
    from confserve.client._predict import PredictClient, Signature, TensorSpec

# Where each lazily imported name lives: the module is imported on first use.
_LAZY: dict[str, str] = {
    "AttestationCheck": "_attest",
    "AttestedServer": "_attest",
    "fetch_server_spki": "_attest",
    "as_json": "_display",
    "describe": "_display",
    "check_inputs": "_inputs",
    "inputs_from_image": "_inputs",
    "inputs_from_json": "_inputs",
    "inputs_from_npy": "_inputs",
    "random_inputs": "_inputs",
    "LoadResult": "_loadgen",
    "LoadSpec": "_loadgen",
    "run_load": "_loadgen",
    "PredictClient": "_predict",
    "Signature": "_predict",
    "TensorSpec": "_predict",
}

__all__ = [
    "AttestationCheck",
    "AttestedServer",
    "ClientError",
    "ClientTls",
    "LoadResult",
    "LoadSpec",
    "PredictClient",
    "RemoteError",
    "Signature",
    "TensorSpec",
    "as_json",
    "check_inputs",
    "describe",
    "fetch_server_spki",
    "inputs_from_image",
    "inputs_from_json",
    "inputs_from_npy",
    "random_inputs",
    "run_load",
]


__getattr__ = lazy_exports(__name__, _LAZY)
