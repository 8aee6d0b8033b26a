"""The model-server replica: its options (declared once), its enclave side (identity, attestation, key
retrieval) and its start sequence. The command line (`confserve serve`), the local cluster and the
Kubernetes and Gramine renderers all go through `ServeOptions`; `build` starts a replica in-process and
`identity` computes what it attests as, without a subprocess.

`ServeOptions` is light (standard library only), so renderers and the cluster's light commands can use
it; the enclave side and the start sequence (cryptography, attestation, provisioning) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confserve._lazy import lazy_exports
from confserve.replica._options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_CONFIG_BYTES,
    OptionsError,
    OptionSpec,
    ServeOptions,
    option_specs,
)

if TYPE_CHECKING:
    from confserve.replica._enclave import EnclaveError, EnclaveRuntime, EnclaveSettings, serve_measured_args
    from confserve.replica._start import (
        ReplicaError,
        build,
        enclave_runtime,
        identity,
        measured_args,
        server_settings,
    )

_LAZY = {
    "EnclaveError": "_enclave",
    "EnclaveRuntime": "_enclave",
    "EnclaveSettings": "_enclave",
    "serve_measured_args": "_enclave",
    "ReplicaError": "_start",
    "build": "_start",
    "enclave_runtime": "_start",
    "identity": "_start",
    "measured_args": "_start",
    "server_settings": "_start",
}

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_CONFIG_BYTES",
    "EnclaveError",
    "EnclaveRuntime",
    "EnclaveSettings",
    "OptionSpec",
    "OptionsError",
    "ReplicaError",
    "ServeOptions",
    "build",
    "enclave_runtime",
    "identity",
    "measured_args",
    "option_specs",
    "serve_measured_args",
    "server_settings",
]


__getattr__ = lazy_exports(__name__, _LAZY)
