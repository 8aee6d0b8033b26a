"""`confserve serve`: the model server, with TF Serving's flag names (dashes accepted too).

Only parsing and wiring live here; the server is `confserve.frontends.ModelServer`, the enclave side
(attestation, key release) is `confserve.frontends._enclave`. Heavy imports (TensorFlow, gRPC, aiohttp)
happen when the command runs, not when the CLI starts.

Start sequence: attest and obtain the wrap key from the secret-provisioning service (retrying until
the deadline; nothing listens meanwhile, so every probe says "not ready") -> decrypt ssl.cfg in memory ->
load the encrypted models into memory -> warm each version up (--enable_model_warmup) -> open the gRPC and
REST ports -> ready. SIGTERM drains in-flight requests (--shutdown_grace_seconds) before exiting. Without a
key nothing is served; plaintext models and configs are refused unless --allow_plaintext (development) says
otherwise.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click

from confserve.cli._common import fail, reports_errors

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_WAKE_SECONDS = 0.2  # how soon the main thread notices a stop signal


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set `stop`. (A module attribute, so in-process tests can leave the runner's alone.)

    Why no signal mask: numpy's BLAS and TensorFlow start threads before and after this runs, and the
    kernel may deliver a signal to any of them. Python's C-level handler records it wherever it lands and
    the main thread runs the Python handler at its next bytecode, which `wait_for_stop` guarantees by
    never blocking for longer than `_WAKE_SECONDS`.
    """
    for signum in _STOP_SIGNALS:
        signal.signal(signum, lambda *_: stop.set())


def wait_for_stop(stop: threading.Event) -> None:
    while not stop.wait(_WAKE_SECONDS):
        pass


def _names(name: str) -> tuple[str, str]:
    return f"--{name}", f"--{name.replace('_', '-')}"


def _read_tls(path: str, wrap_key: Any, bound_path: str | None, allow_plaintext: bool) -> Any:
    from confserve import pf  # noqa: PLC0415
    from confserve.frontends import TlsConfig  # noqa: PLC0415
    from confserve.tfs_config import SSLConfig, parse_text  # noqa: PLC0415

    if pf.is_protected(path):
        if wrap_key is None:
            fail(
                f"{path} is a protected file: give --secret_provision_servers (or --wrap_key in development)"
            )
        data = bytes(pf.read_protected(path, wrap_key, bound_path=bound_path or pf.normalize_path(path)))
    elif allow_plaintext:
        data = Path(path).read_bytes()
    else:
        fail(
            f"{path} is not encrypted: the host could read the server's TLS key (--allow_plaintext to permit)"
        )
    config = parse_text(SSLConfig, data, what="--ssl_config_file")
    if not config.server_cert or not config.server_key:
        fail("--ssl_config_file must set server_cert and server_key (PEM contents)")
    return TlsConfig(
        cert_chain_pem=config.server_cert.encode(),
        private_key_pem=config.server_key.encode(),
        client_ca_pem=config.custom_ca.encode() if config.client_verify else None,
    )


def _batching(path: str | None) -> Any:
    """BatchingSettings from a BatchingParameters file, TF Serving's defaults without one."""
    from confserve.serving.batching import BatchingSettings, batching_settings_from_proto  # noqa: PLC0415
    from confserve.tfs_config import BatchingParameters, parse_text  # noqa: PLC0415

    if path is None:
        return BatchingSettings()
    data = Path(path).read_bytes()
    return batching_settings_from_proto(
        parse_text(BatchingParameters, data, what="--batching_parameters_file")
    )


def _metrics_path(path: str) -> str | None:
    """The Prometheus path a MonitoringConfig enables, or None (TF Serving's default path when unset)."""
    from confserve.serving import DEFAULT_METRICS_PATH  # noqa: PLC0415
    from confserve.tfs_config import MonitoringConfig, parse_text  # noqa: PLC0415

    config = parse_text(MonitoringConfig, Path(path).read_bytes(), what="--monitoring_config_file")
    if not config.prometheus_config.enable:
        return None
    metrics_path = config.prometheus_config.path or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/") or metrics_path.lower().startswith("/v1/"):
        fail("prometheus_config.path must start with / and not be under /v1/ (TF Serving's API)")
    return str(metrics_path)


def _spki(tls: Any) -> bytes:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    cert = x509.load_pem_x509_certificates(tls.cert_chain_pem)[0]
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _file_identity(path: str | None) -> str:
    from confserve.frontends._enclave import file_sha256  # noqa: PLC0415

    return "none" if path is None else "sha256:" + file_sha256(path)


def _model_identity(
    model_config_file: str | None, model_name: str | None, model_base_path: str | None, protected: bool
) -> str:
    """What the measurement says about the models: an owner-encrypted config by its bound path (only the
    owner can change its content, so it may be reloaded); a plaintext config by its content hash."""
    if model_config_file is not None and protected:
        from confserve import pf  # noqa: PLC0415

        return "protected-config:" + pf.normalize_path(model_config_file)
    if model_config_file is not None:
        from confserve.frontends._enclave import file_sha256  # noqa: PLC0415

        return "config-sha256:" + file_sha256(model_config_file)
    return f"{model_name}={model_base_path}"


@click.command("serve")
@click.option(*_names("model_config_file"), "model_config_file", type=click.Path(dir_okay=False, exists=True))
@click.option(*_names("model_name"), "model_name", help="Single model (instead of --model_config_file).")
@click.option(*_names("model_base_path"), "model_base_path", help="Base path of the single model.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address both ports bind to.")  # noqa: S104
@click.option("--port", default=8500, show_default=True, type=click.IntRange(0, 65535), help="gRPC port.")
@click.option(
    *_names("rest_api_port"), "rest_api_port", default=8501, show_default=True, type=click.IntRange(0, 65535)
)
@click.option(*_names("no_rest"), "no_rest", is_flag=True, help="Serve gRPC only.")
@click.option(*_names("ssl_config_file"), "ssl_config_file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    *_names("ssl_config_bound_path"), "ssl_config_bound_path", help="Binding of a protected ssl.cfg."
)
@click.option(
    *_names("file_system_poll_wait_seconds"), "poll_seconds", default=1.0, show_default=True, type=float
)
@click.option(
    *_names("model_config_file_poll_wait_seconds"),
    "config_poll_seconds",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Re-read the (encrypted) model config this often; 0 reads it once.",
)
@click.option(
    *_names("secret_provision_servers"),
    "servers",
    envvar="SECRET_PROVISION_SERVERS",
    help="Secret-provisioning servers (HOST:PORT, separated by , ; or space): attest and get the wrap key.",
)
@click.option(
    *_names("secret_provision_ca_chain_path"),
    "provisioning_ca",
    envvar="SECRET_PROVISION_CA_CHAIN_PATH",
    type=click.Path(dir_okay=False, exists=True),
    help="CA certificate(s) of the secret-provisioning service.",
)
@click.option(*_names("secret_provision_secret_name"), "secret_name", default="default", show_default=True)
@click.option(
    *_names("secret_provision_set_key"),
    "set_key",
    envvar="SECRET_PROVISION_SET_KEY",
    help="Under Gramine: install the key as this Gramine key; the manifest's encrypted mounts then decrypt.",
)
@click.option(
    *_names("secret_provision_deadline_seconds"),
    "deadline_seconds",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Give up on key release after this long.",
)
@click.option(
    "--attestation",
    type=click.Choice(["auto", "gramine", "simulated"]),
    default="auto",
    show_default=True,
    help="auto: Gramine's /dev/attestation when present, else simulation.",
)
@click.option(*_names("sim_platform"), "sim_platform", type=click.Path(file_okay=False, exists=True))
@click.option(*_names("signing_key"), "signing_key", type=click.Path(dir_okay=False, exists=True))
@click.option(*_names("isv_prod_id"), "isv_prod_id", default=0, type=click.IntRange(0, 0xFFFF))
@click.option(*_names("isv_svn"), "isv_svn", default=0, type=click.IntRange(0, 0xFFFF))
@click.option(
    *_names("print_measurement"),
    "print_measurement",
    is_flag=True,
    help="Print this replica's identity; exit.",
)
@click.option(
    *_names("wrap_key"),
    "wrap_key_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Development: take the wrap key from a file instead of attested provisioning.",
)
@click.option(
    *_names("allow_plaintext"),
    "allow_plaintext",
    is_flag=True,
    help="Development: accept unencrypted models/ssl.cfg.",
)
@click.option("--insecure", is_flag=True, help="Development: allow serving without TLS.")
@click.option(
    *_names("grpc_max_message_size"),
    "max_message_bytes",
    default=64 * 1024 * 1024,  # GrpcSettings.max_message_bytes: a batch of 64 224x224x3 float32 images
    show_default=True,
    type=click.IntRange(1024),
    help="Largest gRPC message and REST body, in bytes.",
)
@click.option(
    *_names("rest_api_timeout_in_ms"),
    "rest_timeout_ms",
    default=30000,  # TF Serving's default
    show_default=True,
    type=click.IntRange(1),
    help="REST request deadline (504 past it).",
)
@click.option(
    *_names("max_concurrent_requests"),
    "max_concurrent_requests",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Inference requests at once (gRPC + REST); beyond: RESOURCE_EXHAUSTED / 429. 0: no limit.",
)
@click.option(*_names("tensorflow_intra_op_parallelism"), "intra_op", default=0, type=click.IntRange(0))
@click.option(*_names("tensorflow_inter_op_parallelism"), "inter_op", default=0, type=click.IntRange(0))
@click.option(
    *_names("shutdown_grace_seconds"),
    "shutdown_grace_seconds",
    default=5.0,  # ServerSettings.shutdown_grace_seconds
    show_default=True,
    type=click.FloatRange(0),
    help="On SIGTERM, wait this long for in-flight requests.",
)
@click.option(
    *_names("monitoring_config_file"),
    "monitoring_config_file",
    type=click.Path(dir_okay=False, exists=True),
    help="MonitoringConfig text proto: prometheus_config { enable: true path: ... } serves metrics on REST.",
)
@click.option(
    *_names("enable_model_warmup"),
    "enable_model_warmup",
    is_flag=True,
    help="Replay each version's assets.extra/tf_serving_warmup_requests before it serves.",
)
@click.option(*_names("enable_batching"), "enable_batching", is_flag=True, help="Server-side batching.")
@click.option(
    *_names("batching_parameters_file"),
    "batching_parameters_file",
    type=click.Path(dir_okay=False, exists=True),
    help="BatchingParameters text proto (with --enable_batching; TF Serving's defaults without it).",
)
@reports_errors
def serve(  # noqa: PLR0912, PLR0915 - the start sequence reads best in one place
    model_config_file: str | None,
    model_name: str | None,
    model_base_path: str | None,
    host: str,
    port: int,
    rest_api_port: int,
    no_rest: bool,
    ssl_config_file: str | None,
    ssl_config_bound_path: str | None,
    poll_seconds: float,
    config_poll_seconds: float,
    servers: str | None,
    provisioning_ca: str | None,
    secret_name: str,
    set_key: str | None,
    deadline_seconds: float,
    attestation: str,
    sim_platform: str | None,
    signing_key: str | None,
    isv_prod_id: int,
    isv_svn: int,
    print_measurement: bool,
    wrap_key_path: str | None,
    allow_plaintext: bool,
    insecure: bool,
    max_message_bytes: int,
    rest_timeout_ms: int,
    max_concurrent_requests: int,
    intra_op: int,
    inter_op: int,
    shutdown_grace_seconds: float,
    monitoring_config_file: str | None,
    enable_model_warmup: bool,
    enable_batching: bool,
    batching_parameters_file: str | None,
) -> None:
    """Serve TensorFlow SavedModels over TF Serving's gRPC and REST APIs."""
    stop = threading.Event()
    install_stop_handlers(stop)
    from confserve import pf  # noqa: PLC0415
    from confserve.frontends._enclave import (  # noqa: PLC0415
        EnclaveRuntime,
        EnclaveSettings,
        file_sha256,
        serve_measured_args,
    )
    from confserve.serving import ModelConfig, parse_model_server_config  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_protected = model_config_file is not None and pf.is_protected(model_config_file)
    models: Any = None  # an encrypted model config is read once the key is here
    if model_config_file is not None:
        if model_name or model_base_path:
            fail("give either --model_config_file or --model_name/--model_base_path")
        if not config_protected:
            models = parse_model_server_config(Path(model_config_file).read_text(encoding="utf-8"))
    elif model_name and model_base_path:
        models = (ModelConfig(model_name, model_base_path),)
    else:
        fail("give --model_config_file, or --model_name and --model_base_path")
    if ssl_config_file is None and not insecure:
        fail("give --ssl_config_file, or --insecure to serve without TLS")
    if servers and wrap_key_path:
        fail("give --secret_provision_servers or --wrap_key, not both")

    runtime = None
    if servers or print_measurement:
        if not provisioning_ca:
            fail("--secret_provision_ca_chain_path is required with secret provisioning")
        assert provisioning_ca is not None
        measured = serve_measured_args(
            models=_model_identity(model_config_file, model_name, model_base_path, config_protected),
            ssl_config_file=ssl_config_file,
            ssl_config_bound_path=ssl_config_bound_path,
            provisioning_ca_sha256=file_sha256(provisioning_ca),
            secret_name=secret_name,
            insecure=insecure,
            allow_plaintext_models=allow_plaintext,
            extra={
                "key_delivery": f"gramine-key:{set_key}" if set_key else "memory",
                # What the replica exposes and how it treats requests are behaviour, so they are measured
                # too (by content hash for files); ports, limits and thread counts are not.
                "monitoring": _file_identity(monitoring_config_file),
                "warmup": "true" if enable_model_warmup else "false",
                "batching": _file_identity(batching_parameters_file) if enable_batching else "off",
            },
        )
        runtime = EnclaveRuntime(
            EnclaveSettings(
                servers=servers or "",
                ca_chain=Path(provisioning_ca),
                secret_name=secret_name,
                attestation=attestation,  # type: ignore[arg-type]
                sim_platform=Path(sim_platform) if sim_platform else None,
                signing_key=Path(signing_key) if signing_key else None,
                isv_prod_id=isv_prod_id,
                isv_svn=isv_svn,
                deadline_seconds=deadline_seconds,
            ),
            measured,
        )
        if print_measurement:
            if runtime.identity is None:
                fail("under Gramine the identity comes from the SIGSTRUCT: use confserve measure --sigstruct")
            assert runtime.identity is not None
            ident = runtime.identity
            click.echo(
                json.dumps(
                    {
                        "mr_enclave": ident.mr_enclave.hex(),
                        "mr_signer": ident.mr_signer.hex(),
                        "isv_prod_id": ident.isv_prod_id,
                        "isv_svn": ident.isv_svn,
                        "measured_args": measured,
                    }
                )
            )
            return

    mounts_decrypt = False
    if set_key and (runtime is None or runtime.mode != "gramine"):
        fail("--secret_provision_set_key hands the key to Gramine's encrypted mounts: it needs Gramine")
    if runtime is not None and set_key:
        # Gramine's encrypted mounts: the files look like plaintext to us, Gramine decrypts and checks them.
        runtime.install_key(set_key, runtime.obtain_wrap_key(stop))
        wrap_key: pf.WrapKey | None = None
        mounts_decrypt = True
    elif runtime is not None:
        wrap_key = runtime.obtain_wrap_key(stop)
    elif wrap_key_path is not None:
        logging.getLogger("confserve.serve").warning(
            "development mode: wrap key from %s, no attestation", wrap_key_path
        )
        wrap_key = pf.WrapKey.load(wrap_key_path)
    elif allow_plaintext:
        wrap_key = None
    else:
        fail("no key source: give --secret_provision_servers (development: --wrap_key or --allow_plaintext)")
    if stop.is_set():
        return
    plaintext_ok = allow_plaintext or mounts_decrypt
    from confserve.frontends import ServerSettings  # noqa: PLC0415
    from confserve.frontends.grpc import GrpcSettings  # noqa: PLC0415
    from confserve.frontends.rest import RestSettings  # noqa: PLC0415

    rest = None
    if not no_rest and rest_api_port != 0:
        rest = RestSettings(
            host=host,
            port=rest_api_port,
            request_timeout_seconds=rest_timeout_ms / 1000,
            max_body_bytes=max_message_bytes,
        )
    if batching_parameters_file is not None and not enable_batching:
        fail("--batching_parameters_file needs --enable_batching")
    metrics_path = None if monitoring_config_file is None else _metrics_path(monitoring_config_file)
    if metrics_path is not None and rest is None:
        fail("--monitoring_config_file serves metrics on the REST port: do not disable REST")
    settings = ServerSettings(
        grpc=GrpcSettings(address=f"{host}:{port}", max_message_bytes=max_message_bytes),
        rest=rest,
        file_system_poll_wait_seconds=poll_seconds,
        model_config_poll_wait_seconds=config_poll_seconds,
        max_concurrent_requests=max_concurrent_requests or None,
        shutdown_grace_seconds=shutdown_grace_seconds,
        tensorflow_intra_op_parallelism=intra_op,
        tensorflow_inter_op_parallelism=inter_op,
        metrics_path=metrics_path,
        enable_model_warmup=enable_model_warmup,
        batching=_batching(batching_parameters_file) if enable_batching else None,
    )

    def read_models() -> Any:
        assert model_config_file is not None
        if config_protected:
            key = wrap_key
            if key is None:
                fail(f"{model_config_file} is encrypted: it needs the key from secret provisioning")
                raise AssertionError("unreachable")  # pragma: no cover
            path = pf.normalize_path(model_config_file)
            data = bytes(pf.read_protected(model_config_file, key, bound_path=path))
        else:
            data = Path(model_config_file).read_bytes()
        return parse_model_server_config(data.decode("utf-8"))

    if config_poll_seconds > 0:
        if model_config_file is None:
            fail("--model_config_file_poll_wait_seconds needs --model_config_file")
        if not config_protected and not plaintext_ok:
            fail(
                "the host could rewrite a plaintext model config: encrypt it (confserve pf encrypt) so the "
                "server may reload it, or --allow_plaintext in development"
            )
    if models is None:
        models = read_models()
    _run_server(models, wrap_key, runtime, settings, ssl_config_file, ssl_config_bound_path, plaintext_ok,
                insecure, stop, read_models if config_poll_seconds > 0 else None)  # fmt: skip


def _run_server(
    models: Any,
    wrap_key: Any,
    runtime: Any,
    settings: Any,
    ssl_config_file: str | None,
    ssl_config_bound_path: str | None,
    allow_plaintext: bool,
    insecure: bool,
    stop: threading.Event,
    config_source: Any = None,
) -> None:
    from confserve.frontends import ModelServer  # noqa: PLC0415
    from confserve.serving import PlainOpener, ProtectedOpener  # noqa: PLC0415

    tls = (
        None
        if ssl_config_file is None
        else _read_tls(ssl_config_file, wrap_key, ssl_config_bound_path, allow_plaintext)
    )
    opener = PlainOpener() if wrap_key is None else ProtectedOpener(wrap_key)
    evidence = None
    if runtime is not None and tls is not None:
        spki = _spki(tls)
        evidence = lambda nonce: runtime.evidence(nonce, spki)  # noqa: E731
    server = ModelServer(
        models, opener, tls, settings, allow_insecure=insecure, evidence=evidence, config_source=config_source
    )
    server.start()
    rest_port = "off" if server.rest is None else str(server.rest.port)
    click.echo(f"confserve: serving gRPC on port {server.grpc.port}, REST on port {rest_port}", err=False)
    wait_for_stop(stop)
    logging.getLogger("confserve.serve").info("stopping: draining in-flight requests")
    server.stop()
