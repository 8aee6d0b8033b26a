"""A replica's start sequence, from `ServeOptions` to a serving `ModelServer` (TF Serving's BuildAndStart).

Order: validate the options -> decide what is measured (`measured_args`) and build the enclave runtime ->
obtain the wrap key (attested secret provisioning, retrying until the deadline; nothing listens meanwhile,
so every probe says "not ready") -> decrypt ssl.cfg in memory -> load the encrypted models into memory ->
warm each version up -> open the gRPC and REST ports. Without a key nothing is served; plaintext models
and configs are refused unless `allow_plaintext` (development) says otherwise.

Every decision lives here, typed, where tests reach it without a subprocess: what is measured, where the
key comes from, how ssl.cfg is read and whether the model config may be reloaded. The command line only
collects options and calls `build`.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confserve import pf
from confserve.attestation import EnclaveIdentity
from confserve.errors import ConfserveError, Status
from confserve.files import MAX_SMALL_FILE_BYTES, read_input, read_input_text
from confserve.releases import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    ReleaseError,
    load_public_key,
    verify_release,
)
from confserve.replica._enclave import (
    EnclaveError,
    EnclaveRuntime,
    EnclaveSettings,
    file_sha256,
    serve_measured_args,
    simulated_replica_identity,
)
from confserve.replica._options import OptionsError, ServeOptions

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from confserve.frontends import ModelServer, ServerSettings, TlsConfig
    from confserve.provisioning import Granted
    from confserve.replica._lease import KeyLease
    from confserve.serving import FileOpener, ModelConfig
    from confserve.serving.batching import BatchingSettings

__all__ = [
    "ReplicaError",
    "build",
    "enclave_runtime",
    "identity",
    "measured_args",
    "server_settings",
]

_log = logging.getLogger("confserve.serve")


class ReplicaError(ConfserveError, status=Status.FAILED_PRECONDITION):
    """The replica cannot start with these options and files; the message says what to change."""


# -- identity ---------------------------------------------------------------------------------------------
# What is measured depends on what the options mean, not on how a path was spelled: paths are measured in
# Gramine's lexical normal form (the enclave's view: `./ssl.cfg` and `ssl.cfg` are one file), files that
# only configure behaviour by their content hash. Content is read relative to `base_dir` (the directory a
# replica runs in; the owner measures a copy of the host's directory without being in it).
def _file_identity(path: str | None, base_dir: Path | None) -> str:
    return "none" if path is None else "sha256:" + file_sha256(_at(path, base_dir))


def _at(path: str, base_dir: Path | None) -> Path:
    return Path(path) if base_dir is None else base_dir / path


def _config_protected(options: ServeOptions, base_dir: Path | None = None) -> bool:
    return options.model_config_file is not None and pf.is_protected(_at(options.model_config_file, base_dir))


def _model_identity(options: ServeOptions, base_dir: Path | None) -> str:
    """What the measurement says about the models: an owner-encrypted config by its bound path (only the
    owner can change its content, so it may be reloaded); a plaintext config by its content hash."""
    if options.model_config_file is not None and _config_protected(options, base_dir):
        return "protected-config:" + pf.normalize_path(options.model_config_file)
    if options.model_config_file is not None:
        return "config-sha256:" + file_sha256(_at(options.model_config_file, base_dir))
    assert options.model_base_path is not None
    return f"{options.model_name}={pf.normalize_path(options.model_base_path)}"


def measured_args(options: ServeOptions, *, base_dir: Path | None = None) -> dict[str, str]:
    """The measured description of this replica (docs/server.md, "What is measured")."""
    if not options.secret_provision_ca_chain_path:
        raise OptionsError("--secret_provision_ca_chain_path is required with secret provisioning")
    set_key = options.secret_provision_set_key
    ssl_bound = options.ssl_config_bound_path
    releases = {}
    if options.release_public_key is not None:
        # The owner's release key decides what may be served: by content, so the host cannot swap it.
        releases["release_public_key"] = _file_identity(options.release_public_key, base_dir)
    return serve_measured_args(
        models=_model_identity(options, base_dir),
        ssl_config_file=pf.normalize_path(options.ssl_config_file) if options.ssl_config_file else None,
        ssl_config_bound_path=pf.normalize_path(ssl_bound) if ssl_bound else None,
        provisioning_ca_sha256=file_sha256(_at(options.secret_provision_ca_chain_path, base_dir)),
        secret_name=options.secret_provision_secret_name,
        insecure=options.insecure,
        allow_plaintext_models=options.allow_plaintext,
        extra={
            "key_delivery": f"gramine-key:{set_key}" if set_key else "memory",
            # What the replica exposes and how it treats requests are behaviour, so they are measured
            # too (by content hash for files); ports, limits and thread counts are not.
            "monitoring": _file_identity(options.monitoring_config_file, base_dir),
            "warmup": "true" if options.enable_model_warmup else "false",
            "batching": (
                _file_identity(options.batching_parameters_file, base_dir)
                if options.enable_batching
                else "off"
            ),
            # Which MetaGraph serves, and whether signatures are refused by method name.
            "saved_model_tags": ",".join(_saved_model_tags(options)),
            "signature_method_name_check": "true" if options.enable_signature_method_name_check else "false",
            **releases,
        },
    )


def enclave_runtime(options: ServeOptions) -> EnclaveRuntime:
    """The attester, identity and key retrieval of a replica with these options."""
    assert options.secret_provision_ca_chain_path is not None or not options.provisioned
    return EnclaveRuntime(
        EnclaveSettings(
            servers=options.secret_provision_servers or "",
            ca_chain=Path(options.secret_provision_ca_chain_path or ""),
            secret_name=options.secret_provision_secret_name,
            attestation=options.attestation,  # type: ignore[arg-type]  # checked by validate()
            sim_platform=Path(options.sim_platform) if options.sim_platform else None,
            signing_key=Path(options.signing_key) if options.signing_key else None,
            isv_prod_id=options.isv_prod_id,
            isv_svn=options.isv_svn,
            deadline_seconds=options.secret_provision_deadline_seconds,
        ),
        measured_args(options),
    )


def identity(
    options: ServeOptions, *, base_dir: Path | None = None
) -> tuple[EnclaveIdentity, dict[str, str]]:
    """The identity a simulated replica with these options attests as, and its measured arguments,
    computed from the options and the files they name (relative to `base_dir`), without a platform:
    the owner can compute it on its own machine. The signer's public key is enough. Under Gramine the
    identity comes from the SIGSTRUCT (`confserve measure --sigstruct`)."""
    options.validate()
    if options.attestation == "gramine":
        raise ReplicaError(
            "under Gramine the identity comes from the SIGSTRUCT: use confserve measure --sigstruct"
        )
    if options.signing_key is None:
        raise ReplicaError(
            "measuring a simulated replica needs --signing_key (the enclave signer's key; "
            "the public key is enough)"
        )
    measured = measured_args(options, base_dir=base_dir)
    ident = simulated_replica_identity(
        _at(options.signing_key, base_dir), measured, isv_prod_id=options.isv_prod_id, isv_svn=options.isv_svn
    )
    return ident, measured


# -- files read at start ------------------------------------------------------------------------------------
def _read_tls(options: ServeOptions, wrap_key: pf.WrapKey | None, allow_plaintext: bool) -> TlsConfig:
    from confserve.frontends import TlsConfig  # noqa: PLC0415
    from confserve.tfs_config import SSLConfig, parse_text  # noqa: PLC0415

    path = options.ssl_config_file
    assert path is not None
    if pf.is_protected(path):
        if wrap_key is None:
            raise ReplicaError(
                f"{path} is a protected file: give --secret_provision_servers (or --wrap_key in development)"
            )
        bound = options.ssl_config_bound_path or pf.normalize_path(path)
        data = bytes(pf.read_protected(path, wrap_key, bound_path=bound))
    elif allow_plaintext:
        data = read_input(path, max_bytes=MAX_SMALL_FILE_BYTES)
    else:
        raise ReplicaError(
            f"{path} is not encrypted: the host could read the server's TLS key (--allow_plaintext to permit)"
        )
    config = parse_text(SSLConfig, data, what="--ssl_config_file")
    if not config.server_cert or not config.server_key:
        raise ReplicaError("--ssl_config_file must set server_cert and server_key (PEM contents)")
    return TlsConfig(
        cert_chain_pem=config.server_cert.encode(),
        private_key_pem=config.server_key.encode(),
        client_ca_pem=config.custom_ca.encode() if config.client_verify else None,
    )


def _batching(path: str | None) -> BatchingSettings:
    """BatchingSettings from a BatchingParameters file, TF Serving's defaults without one."""
    from confserve.serving.batching import BatchingSettings, batching_settings_from_proto  # noqa: PLC0415
    from confserve.tfs_config import BatchingParameters, parse_text  # noqa: PLC0415

    if path is None:
        return BatchingSettings()
    data = read_input(path, max_bytes=MAX_SMALL_FILE_BYTES)
    return batching_settings_from_proto(
        parse_text(BatchingParameters, data, what="--batching_parameters_file")
    )


def _metrics_path(path: str) -> str | None:
    """The Prometheus path a MonitoringConfig enables, or None (TF Serving's default path when unset)."""
    from confserve.serving import DEFAULT_METRICS_PATH  # noqa: PLC0415
    from confserve.tfs_config import MonitoringConfig, parse_text  # noqa: PLC0415

    data = read_input(path, max_bytes=MAX_SMALL_FILE_BYTES)
    config = parse_text(MonitoringConfig, data, what="--monitoring_config_file")
    if not config.prometheus_config.enable:
        return None
    metrics_path = config.prometheus_config.path or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/") or metrics_path.lower().startswith("/v1/"):
        raise OptionsError(
            "prometheus_config.path must start with / and not be under /v1/ (TF Serving's API)"
        )
    return str(metrics_path)


def _spki(tls: TlsConfig) -> bytes:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    cert = x509.load_pem_x509_certificates(tls.cert_chain_pem)[0]
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _saved_model_tags(options: ServeOptions) -> tuple[str, ...]:
    """--saved_model_tags as a sorted set (TF Serving's parsing, without importing the serving package)."""
    return tuple(sorted({tag.strip() for tag in options.saved_model_tags.split(",") if tag.strip()}))


def server_settings(options: ServeOptions) -> ServerSettings:
    from confserve.frontends import ServerSettings  # noqa: PLC0415
    from confserve.frontends.grpc import GrpcSettings, parse_channel_arguments  # noqa: PLC0415
    from confserve.frontends.rest import RestSettings  # noqa: PLC0415
    from confserve.serving import ManagerSettings  # noqa: PLC0415

    rest = None
    if options.rest_enabled:
        rest = RestSettings(
            host=options.host,
            port=options.rest_api_port,
            request_timeout_seconds=options.rest_api_timeout_in_ms / 1000,
            max_body_bytes=options.grpc_max_message_size,
            num_threads=options.rest_api_num_threads or RestSettings.num_threads,
        )
    try:
        channel_arguments = parse_channel_arguments(options.grpc_channel_arguments)
    except ValueError as exc:
        raise OptionsError(str(exc)) from None
    session_threads = options.tensorflow_session_parallelism
    metrics_path = None
    if options.monitoring_config_file is not None:
        metrics_path = _metrics_path(options.monitoring_config_file)
    if metrics_path is not None and rest is None:
        raise OptionsError("--monitoring_config_file serves metrics on the REST port: do not disable REST")
    return ServerSettings(
        grpc=GrpcSettings(
            address=f"{options.host}:{options.port}",
            max_message_bytes=options.grpc_max_message_size,
            channel_arguments=channel_arguments,
            max_workers=options.grpc_max_threads or GrpcSettings.max_workers,
        ),
        rest=rest,
        file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
        model_config_poll_wait_seconds=options.model_config_file_poll_wait_seconds,
        max_concurrent_requests=options.max_concurrent_requests or None,
        max_request_memory_bytes=options.max_request_memory_bytes,
        max_inflight_memory_bytes=options.max_inflight_memory_bytes,
        shutdown_grace_seconds=options.shutdown_grace_seconds,
        tensorflow_intra_op_parallelism=options.tensorflow_intra_op_parallelism or session_threads,
        tensorflow_inter_op_parallelism=options.tensorflow_inter_op_parallelism or session_threads,
        metrics_path=metrics_path,
        enable_model_warmup=options.enable_model_warmup,
        batching=_batching(options.batching_parameters_file) if options.enable_batching else None,
        manager=ManagerSettings(
            max_load_retries=options.max_num_load_retries,
            load_retry_interval_seconds=max(0, options.load_retry_interval_micros) / 1e6,
        ),
        saved_model_tags=_saved_model_tags(options),
        enable_signature_method_name_check=options.enable_signature_method_name_check,
        serialize_outputs_as_tensor_content=options.enable_serialization_as_tensor_content,
    )


# -- the key ------------------------------------------------------------------------------------------------
def _obtain_key(
    options: ServeOptions, runtime: EnclaveRuntime | None, stop: threading.Event
) -> tuple[pf.WrapKey | None, bool]:
    """The wrap key (None: plaintext or Gramine's encrypted mounts) and whether Gramine's encrypted
    mounts decrypt the files for us."""
    set_key = options.secret_provision_set_key
    if set_key and (runtime is None or runtime.mode != "gramine"):
        raise ReplicaError(
            "--secret_provision_set_key hands the key to Gramine's encrypted mounts: it needs Gramine"
        )
    if runtime is not None and set_key:
        # Gramine's encrypted mounts: the files look like plaintext to us, Gramine decrypts and checks them.
        runtime.install_key(set_key, runtime.obtain_wrap_key(stop))
        return None, True
    if runtime is not None:
        return runtime.obtain_wrap_key(stop), False
    if options.wrap_key is not None:
        _log.warning("development mode: wrap key from %s, no attestation", options.wrap_key)
        return pf.WrapKey.load(options.wrap_key), False
    if options.allow_plaintext:
        return None, False
    raise ReplicaError(
        "no key source: give --secret_provision_servers (development: --wrap_key or --allow_plaintext)"
    )


def _models(options: ServeOptions) -> tuple[ModelConfig, ...] | None:
    """The single model, or a plaintext config's models; None for an encrypted config (read with the key)."""
    from confserve.serving import ModelConfig, parse_model_server_config  # noqa: PLC0415

    if options.model_config_file is None:
        assert options.model_name
        assert options.model_base_path
        return (ModelConfig(options.model_name, options.model_base_path),)
    if _config_protected(options):
        return None
    text = read_input_text(options.model_config_file, max_bytes=MAX_SMALL_FILE_BYTES)
    return tuple(parse_model_server_config(text))


def _config_reader(options: ServeOptions, wrap_key: pf.WrapKey | None) -> Callable[[], Any]:
    from confserve.serving import parse_model_server_config  # noqa: PLC0415

    path = options.model_config_file
    assert path is not None
    protected = _config_protected(options)

    def read_models() -> Any:
        if protected:
            if wrap_key is None:
                raise ReplicaError(f"{path} is encrypted: it needs the key from secret provisioning")
            data = bytes(pf.read_protected(path, wrap_key, bound_path=pf.normalize_path(path)))
        else:
            data = read_input(path, max_bytes=MAX_SMALL_FILE_BYTES)
        return parse_model_server_config(data.decode("utf-8"))

    return read_models


def _release_public_key(path: str) -> Ed25519PublicKey:
    try:
        return load_public_key(read_input(path, max_bytes=MAX_SMALL_FILE_BYTES))
    except OSError as exc:
        raise ReplicaError(f"cannot read --release_public_key {path}: {exc.strerror}") from None


def _release_key_ids(models: Sequence[ModelConfig], public_key: Ed25519PublicKey) -> set[str]:
    """The key ids the models' current releases name (what the first lease asks for). A release that
    cannot be read or verified names none: the release gate reports it at the first poll."""
    key_ids = set()
    for model in models:
        try:
            data = read_input(posixpath.join(model.base_path, MANIFEST_FILE), max_bytes=MAX_MANIFEST_BYTES)
            key_ids.add(verify_release(data, public_key, model=model.name).key_id)
        except (OSError, ReleaseError):
            continue
    return key_ids


def _key_lease(
    options: ServeOptions,
    runtime: EnclaveRuntime,
    stop: threading.Event,
    models: Sequence[ModelConfig] | None,
    public_key: Ed25519PublicKey,
) -> KeyLease:
    """The replica's lease with the key service (docs/releases.md): the first session waits up to the
    start deadline; a renewal gets a quarter of the lease, then the lease's backoff takes over. When the
    models are known already (not an encrypted config), the first session asks for their keys too."""
    from confserve.replica._lease import KeyLease  # noqa: PLC0415

    lease_seconds = options.secret_provision_lease_seconds
    started = False

    def fetch(names: Sequence[str], models: Sequence[str]) -> Granted:
        deadline = options.secret_provision_deadline_seconds
        if started:
            deadline = min(deadline, lease_seconds / 4)
        return runtime.lease(names, models, cancel=stop, deadline_seconds=deadline)

    lease = KeyLease(fetch, default_key=options.secret_provision_secret_name, lease_seconds=lease_seconds)
    if models is not None:
        lease.want(_release_key_ids(models, public_key), {m.name for m in models})
    lease.renew()  # the default key: ssl.cfg and an encrypted model config need it
    started = True
    return lease


def _leased_key(lease: KeyLease, options: ServeOptions) -> pf.WrapKey:
    key = lease.current().keys.get(options.secret_provision_secret_name)
    if key is None:
        raise ReplicaError(
            f"the key service did not grant the secret {options.secret_provision_secret_name!r}"
        )
    return key


def _model_opener(
    models: Sequence[ModelConfig],
    wrap_key: pf.WrapKey | None,
    public_key: Ed25519PublicKey | None,
    lease: KeyLease | None,
) -> FileOpener:
    """Where model bytes come from: plain, one wrap key, or (with a pinned release key) the owner's
    releases with the keys they name."""
    from confserve.serving import KeyGrant, PlainOpener, ProtectedOpener, ReleasedOpener, StaticKeys  # noqa: PLC0415

    if public_key is None:
        return PlainOpener() if wrap_key is None else ProtectedOpener(wrap_key)
    if lease is None:  # development: the one key opens every release
        return ReleasedOpener(public_key, StaticKeys(KeyGrant(any_key=wrap_key)), plaintext=wrap_key is None)
    # The keys the models' releases name and the models' floors, before the first poll.
    key_ids, names = _release_key_ids(models, public_key), {m.name for m in models}
    lease.want(key_ids, names)
    if not lease.covers(key_ids, names):
        lease.renew()
    return ReleasedOpener(public_key, lease)


def _report_releases(server: ModelServer, opener: FileOpener) -> None:
    """With metrics on, each model's release and floor and the key lease's end are metrics too (the
    local cluster's status view shows them)."""
    from confserve.serving import ReleasedOpener, ReleaseMetrics  # noqa: PLC0415

    if server.metrics is not None and isinstance(opener, ReleasedOpener):
        server.metrics.registry.register(ReleaseMetrics(opener))


# -- build and start ---------------------------------------------------------------------------------------
def build(options: ServeOptions, stop: threading.Event) -> ModelServer | None:
    """Validate, attest, get the key, load the models and open the ports; returns the started server,
    or None when `stop` was set while waiting for the key. Raises ConfserveError subclasses."""
    from confserve.frontends import PLAINTEXT, ModelServer  # noqa: PLC0415

    options.validate()
    models = _models(options)
    settings = server_settings(options)
    runtime = enclave_runtime(options) if options.provisioned else None
    public_key = _release_public_key(options.release_public_key) if options.release_public_key else None
    lease = None
    try:
        if public_key is not None and runtime is not None:
            lease = _key_lease(options, runtime, stop, models, public_key)
            wrap_key: pf.WrapKey | None = _leased_key(lease, options)
            mounts_decrypt = False
        else:
            wrap_key, mounts_decrypt = _obtain_key(options, runtime, stop)
    except EnclaveError:
        if stop.is_set():
            return None
        raise
    if stop.is_set():
        return None
    plaintext_ok = options.allow_plaintext or mounts_decrypt
    if (
        options.model_config_file_poll_wait_seconds > 0
        and not _config_protected(options)
        and not plaintext_ok
    ):
        raise ReplicaError(
            "the host could rewrite a plaintext model config: encrypt it (confserve pf encrypt) so the "
            "server may reload it, or --allow_plaintext in development"
        )
    config_source = None
    if options.model_config_file is not None:
        read_models = _config_reader(options, wrap_key)
        if models is None:
            models = tuple(read_models())
        if options.model_config_file_poll_wait_seconds > 0:
            config_source = read_models
    assert models is not None
    tls = None if options.ssl_config_file is None else _read_tls(options, wrap_key, plaintext_ok)
    opener = _model_opener(models, wrap_key, public_key, lease)
    evidence = None
    if runtime is not None and tls is not None:
        spki = _spki(tls)
        evidence = lambda nonce: runtime.evidence(nonce, spki)  # noqa: E731
    server = ModelServer(
        models,
        opener,
        PLAINTEXT if tls is None else tls,  # no ssl.cfg: options.validate() required --insecure
        settings,
        evidence=evidence,
        config_source=config_source,
    )
    _report_releases(server, opener)
    server.start()
    if lease is not None:
        threading.Thread(target=lease.run, args=(stop,), name="key-lease", daemon=True).start()
    return server
