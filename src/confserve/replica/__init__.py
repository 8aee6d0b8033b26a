"""The model-server replica: its options (declared once), its enclave side (identity, attestation, key
retrieval) and its start sequence. The command line (`confserve serve`), the local cluster and the
Kubernetes and Gramine renderers all go through `ServeOptions`; `build` starts a replica in-process and
`identity` computes what it attests as, without a subprocess."""

from confserve.replica._enclave import (
    SERVE_ENTRY_POINT,
    EnclaveError,
    EnclaveRuntime,
    EnclaveSettings,
    file_sha256,
    serve_measured_args,
)
from confserve.replica._options import (
    DEFAULT_MAX_MESSAGE_BYTES,
    OptionsError,
    OptionSpec,
    ServeOptions,
    option_specs,
)
from confserve.replica._start import (
    ReplicaError,
    build,
    enclave_runtime,
    identity,
    measured_args,
    server_settings,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SERVE_ENTRY_POINT",
    "EnclaveError",
    "EnclaveRuntime",
    "EnclaveSettings",
    "OptionSpec",
    "OptionsError",
    "ReplicaError",
    "ServeOptions",
    "build",
    "enclave_runtime",
    "file_sha256",
    "identity",
    "measured_args",
    "option_specs",
    "serve_measured_args",
    "server_settings",
]
