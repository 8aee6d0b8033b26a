"""`ServeOptions`: every option of a model-server replica, declared once.

One frozen dataclass holds what `confserve serve` accepts (TF Serving's flag names; a dash form is
accepted too). Each field carries, in its metadata, the flag's help text and its constraints, so:

- the command line (`confserve.cli._serve`) builds its click options from these fields;
- `to_argv()` renders a replica's command line for the local cluster and the Kubernetes and Gramine
  renderers, from the same object a replica parses it into, so the two cannot drift;
- `validate()` holds every rule about combinations of options (one place, raising `OptionsError`);
- `measured` in each field says whether it is part of the replica's identity (docs/server.md,
  "What is measured"): behaviour is measured, availability (ports, limits, threads) is not;
- `refused` marks a TF Serving flag confserve does not support: it is accepted at its default, and any
  other value is refused by `validate()` with the reason (docs/server.md, "TF Serving flags").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from confserve.errors import ConfserveError, Status

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_CONFIG_BYTES",
    "OptionSpec",
    "OptionsError",
    "ServeOptions",
    "option_specs",
]

AttestationMode = Literal["auto", "gramine", "simulated"]
PathKind = Literal["file", "dir"]

# A batch of 64 224x224x3 float32 images (38.5 MB) fits with room for the envelope.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024


class OptionsError(ConfserveError, status=Status.INVALID_ARGUMENT):
    """A combination of serve options that cannot work; the message names the flags."""


@dataclass(frozen=True)
class OptionSpec:
    """What the command line needs to know about one option (see `option_specs`)."""

    name: str  # the field name, also the flag name: --NAME (and --NAME-WITH-DASHES)
    default: Any
    kind: type  # bool, int, float or str
    help: str
    measured: bool  # part of the replica's identity (directly or through a file's content)
    path: PathKind | None = None  # a path that must exist when the replica starts
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    envvar: str | None = None
    cli_only: bool = False  # an action of the command, never rendered into a replica's argv
    refused: str | None = None  # a TF Serving flag not supported: why (any value but the default fails)


def _opt(default: Any, help: str, *, measured: bool = False, **spec: Any) -> Any:
    return field(default=default, metadata={"help": help, "measured": measured, **spec})


def _measured_file(help: str, **spec: Any) -> Any:
    """An optional file that must exist at start and is part of the replica's identity."""
    return _opt(None, help, measured=True, path="file", **spec)


def _refused(default: Any, reason: str, **spec: Any) -> Any:
    """A TF Serving flag confserve does not support: accepted at `default`, any other value refused."""
    return _opt(default, "Not supported.", refused=reason, **spec)


@dataclass(frozen=True)
class ServeOptions:
    # -- which models -----------------------------------------------------------------------------------
    model_config_file: str | None = _measured_file("ModelServerConfig text proto (instead of --model_name).")
    model_name: str | None = _opt(None, "Single model (instead of --model_config_file).", measured=True)
    model_base_path: str | None = _opt(None, "Base path of the single model.", measured=True)
    model_config_file_poll_wait_seconds: float = _opt(
        0.0, "Re-read the (encrypted) model config this often; 0 reads it once.", minimum=0
    )
    file_system_poll_wait_seconds: float = _opt(1.0, "Look for new model versions this often.")
    # -- network ----------------------------------------------------------------------------------------
    host: str = _opt("0.0.0.0", "Address both ports bind to.")  # noqa: S104 - a server's default
    port: int = _opt(8500, "gRPC port.", minimum=0, maximum=65535)
    rest_api_port: int = _opt(8501, "REST port (0: no REST).", minimum=0, maximum=65535)
    no_rest: bool = _opt(False, "Serve gRPC only.")
    ssl_config_file: str | None = _measured_file(
        "SSLConfig text proto (encrypted: a Gramine protected file)."
    )
    ssl_config_bound_path: str | None = _opt(None, "Binding of a protected ssl.cfg.", measured=True)
    # -- where the key comes from -----------------------------------------------------------------------
    secret_provision_servers: str | None = _opt(
        None,
        "Secret-provisioning servers (HOST:PORT, separated by , ; or space): attest and get the wrap key.",
        envvar="SECRET_PROVISION_SERVERS",
    )
    secret_provision_ca_chain_path: str | None = _measured_file(
        "CA certificate(s) of the secret-provisioning service.", envvar="SECRET_PROVISION_CA_CHAIN_PATH"
    )
    secret_provision_secret_name: str = _opt("default", "Name of the secret to ask for.", measured=True)
    secret_provision_set_key: str | None = _opt(
        None,
        "Under Gramine: install the key as this Gramine key; the manifest's encrypted mounts then decrypt.",
        measured=True,
        envvar="SECRET_PROVISION_SET_KEY",
    )
    # A replica may start before the provisioning service (a cluster coming up, a service restart): keep
    # asking for five minutes, backing off between rounds, before giving up.
    secret_provision_deadline_seconds: float = _opt(
        300.0, "Give up on key release after this long.", minimum=0.1
    )
    attestation: str = _opt(
        "auto",
        "auto: Gramine's /dev/attestation when present, else simulation.",
        choices=("auto", "gramine", "simulated"),
    )
    sim_platform: str | None = _opt(None, "Simulation: the simulated SGX platform's directory.", path="dir")
    signing_key: str | None = _opt(None, "Simulation: the enclave signer's RSA-3072 key (PEM).", path="file")
    isv_prod_id: int = _opt(0, "Simulation: the enclave's ISV product id.", minimum=0, maximum=0xFFFF)
    isv_svn: int = _opt(0, "Simulation: the enclave's security version.", minimum=0, maximum=0xFFFF)
    wrap_key: str | None = _opt(
        None, "Development: take the wrap key from a file instead of attested provisioning.", path="file"
    )
    allow_plaintext: bool = _opt(False, "Development: accept unencrypted models/ssl.cfg.", measured=True)
    insecure: bool = _opt(False, "Development: allow serving without TLS.", measured=True)
    # -- limits (availability, not measured) ------------------------------------------------------------
    grpc_max_message_size: int = _opt(
        DEFAULT_MAX_MESSAGE_BYTES, "Largest gRPC message and REST body, in bytes.", minimum=1024
    )
    rest_api_timeout_in_ms: int = _opt(
        30000, "REST request deadline (504 past it).", minimum=1
    )  # TF Serving's
    max_concurrent_requests: int = _opt(
        0,
        "Inference requests at once (gRPC + REST); beyond: RESOURCE_EXHAUSTED / 429. 0: no limit.",
        minimum=0,
    )
    # Request memory (docs/deployment.md, "Request memory"): what a request's decoded inputs (and a REST
    # body and its parse) may hold, alone and all requests in flight together; checked before allocating.
    max_request_memory_bytes: int = _opt(
        0,
        "Memory one request's decoded inputs may take; beyond: INVALID_ARGUMENT / 400. "
        "0: the smaller of twice --grpc_max_message_size and a quarter of the in-flight limit.",
        minimum=0,
    )
    max_inflight_memory_bytes: int = _opt(
        0,
        "Memory the decoded inputs of all requests in flight may take; beyond: RESOURCE_EXHAUSTED / 429. "
        "0: an eighth of the replica's memory (the enclave size under Gramine).",
        minimum=0,
    )
    tensorflow_intra_op_parallelism: int = _opt(
        0, "TensorFlow's intra-op threads (0: its choice).", minimum=0
    )
    tensorflow_inter_op_parallelism: int = _opt(
        0, "TensorFlow's inter-op threads (0: its choice).", minimum=0
    )
    # Kubernetes' default terminationGracePeriodSeconds is 30, so a few seconds leaves room for the rest.
    shutdown_grace_seconds: float = _opt(5.0, "On SIGTERM, wait this long for in-flight requests.", minimum=0)
    # -- TF Serving flags that only size pools or tune loading (not measured) ------------------------------
    rest_api_num_threads: int = _opt(0, "REST worker threads (0: 8).", minimum=0)
    grpc_max_threads: int = _opt(0, "gRPC worker threads (0: 16).", minimum=0)
    grpc_channel_arguments: str = _opt(
        "", "gRPC server arguments, key=value,... (e.g. grpc.max_connection_age_ms=2000)."
    )
    tensorflow_session_parallelism: int = _opt(
        0, "TensorFlow threads when the intra/inter-op flags are 0 (0: its choice).", minimum=0
    )
    max_num_load_retries: int = _opt(5, "Retries of a failed model load.", minimum=0)  # TF Serving's default
    load_retry_interval_micros: int = _opt(
        60_000_000, "Wait between load retries (microseconds; negative: none).", minimum=-1
    )  # TF Serving's default: one minute
    enable_serialization_as_tensor_content: bool = _opt(
        False, "Predict answers carry tensors in tensor_content instead of typed values."
    )
    num_load_threads: int = _opt(0, "Accepted; versions load one at a time.", minimum=0)
    num_unload_threads: int = _opt(0, "Accepted; versions unload one at a time.", minimum=0)
    flush_filesystem_caches: bool = _opt(False, "Accepted; models are read into memory, no cache to flush.")
    allow_version_labels_for_unavailable_models: bool = _opt(
        False, "Accepted; labels may always name versions not loaded yet."
    )
    enable_grpc_healthcheck_service: bool = _opt(False, "Accepted; the gRPC health service always runs.")
    remove_unused_fields_from_bundle_metagraph: bool = _opt(False, "Accepted; no effect.")
    skip_initialize_tpu: bool = _opt(False, "Accepted; no TPU is used.")
    per_process_gpu_memory_fraction: float = _opt(0.0, "Accepted; no GPU is used.", minimum=0, maximum=1)
    num_tflite_pools: int = _opt(0, "Accepted; TensorFlow Lite models are not served.", minimum=0)
    num_tflite_interpreters_per_pool: int = _opt(
        0, "Accepted; TensorFlow Lite models are not served.", minimum=0
    )
    # -- TF Serving flags not supported (refused unless at their default) --------------------------------
    grpc_socket_path: str | None = _refused(None, "gRPC on a UNIX socket is not offered: serve TLS on --port")
    rest_api_enable_cors_support: bool = _refused(
        False, "CORS would let any web page call the REST API from a browser"
    )
    use_alts_credentials: bool = _refused(
        False, "ALTS is Google-internal; confserve serves TLS (--ssl_config_file)"
    )
    platform_config_file: str | None = _refused(None, "only the TensorFlow SavedModel platform is served")
    tensorflow_session_config_file: str | None = _refused(
        None, "a session ConfigProto file is not read; use the parallelism flags"
    )
    enable_per_model_batching_parameters: bool = _refused(
        False,
        "per-model batching_params.pbtxt is not read; use --batching_parameters_file",
    )
    num_request_iterations_for_warmup: int = _opt(
        1, "Not supported beyond 1.", refused="each warmup record is replayed once", minimum=0
    )
    enable_profiler: bool = _refused(
        False, "a profiler service would expose the timing and traces of inferences"
    )
    thread_pool_factory_config_file: str | None = _refused(None, "custom thread pools are not configurable")
    mixed_precision: str | None = _refused(None, "models run in their exported precision")
    prefer_tflite_model: bool = _refused(False, "TensorFlow Lite models are not served")
    xla_cpu_compilation_enabled: bool = _refused(False, "XLA JIT compilation is off")
    xla_gpu_compilation_enabled: bool = _refused(False, "XLA JIT compilation is off")
    # -- releases and key leases (docs/releases.md) ------------------------------------------------------
    release_public_key: str | None = _measured_file(
        "The owner's release public key (release.pub.pem): serve only what a valid signed release lists.",
    )
    # The owner's freshness/availability trade-off: a raised floor or a withdrawn key takes effect within
    # one lease, and a replica that cannot renew stops serving when it ends. Five minutes by default; the
    # key service's policy may shorten it (max_lease_seconds), never lengthen it.
    secret_provision_lease_seconds: float = _opt(
        300.0, "Renew the keys and release floors with the key service within this long.", minimum=2
    )
    # -- behaviour (measured by content) ----------------------------------------------------------------
    saved_model_tags: str = _opt(
        "serve", "Comma-separated tags of the MetaGraph served from each SavedModel.", measured=True
    )
    enable_signature_method_name_check: bool = _opt(
        False,
        "Refuse signatures whose method_name does not match the API (TF2 exports name all 'predict').",
        measured=True,
    )
    monitoring_config_file: str | None = _measured_file(
        "MonitoringConfig text proto: prometheus_config { enable: true path: ... } serves metrics on REST.",
    )
    enable_model_warmup: bool = _opt(
        False,
        "Replay each version's assets.extra/tf_serving_warmup_requests before it serves.",
        measured=True,
    )
    enable_batching: bool = _opt(False, "Server-side batching.", measured=True)
    batching_parameters_file: str | None = _measured_file(
        "BatchingParameters text proto (with --enable_batching; TF Serving's defaults without it).",
    )

    # -- rules --------------------------------------------------------------------------------------------
    @property
    def provisioned(self) -> bool:
        """Whether the key comes from attested secret provisioning."""
        return bool(self.secret_provision_servers)

    def validate(self) -> ServeOptions:
        """Raise OptionsError for a combination that cannot work; returns self."""
        if self.model_config_file is not None:
            if self.model_name or self.model_base_path:
                raise OptionsError("give either --model_config_file or --model_name/--model_base_path")
        elif not (self.model_name and self.model_base_path):
            raise OptionsError("give --model_config_file, or --model_name and --model_base_path")
        if self.ssl_config_file is None and not self.insecure:
            raise OptionsError("give --ssl_config_file, or --insecure to serve without TLS")
        if self.secret_provision_servers and self.wrap_key:
            raise OptionsError("give --secret_provision_servers or --wrap_key, not both")
        if self.secret_provision_servers and not self.secret_provision_ca_chain_path:
            raise OptionsError("--secret_provision_ca_chain_path is required with secret provisioning")
        if self.batching_parameters_file is not None and not self.enable_batching:
            raise OptionsError("--batching_parameters_file needs --enable_batching")
        if self.model_config_file_poll_wait_seconds > 0 and self.model_config_file is None:
            raise OptionsError("--model_config_file_poll_wait_seconds needs --model_config_file")
        if self.secret_provision_set_key and not self.secret_provision_servers:
            raise OptionsError("--secret_provision_set_key needs --secret_provision_servers")
        if self.release_public_key and self.secret_provision_set_key:
            raise OptionsError(
                "--release_public_key checks the files' ciphertext: Gramine's encrypted mounts "
                "(--secret_provision_set_key) hide it"
            )
        if self.attestation not in ("auto", "gramine", "simulated"):
            raise OptionsError(f"--attestation must be auto, gramine or simulated, not {self.attestation!r}")
        self._validate_tf_serving_flags()
        return self

    def _validate_tf_serving_flags(self) -> None:
        if not any(tag.strip() for tag in self.saved_model_tags.split(",")):
            raise OptionsError("--saved_model_tags names no tag")
        for spec in option_specs():
            value = getattr(self, spec.name)
            if spec.refused is None or value == spec.default:
                continue
            if spec.name == "num_request_iterations_for_warmup" and value == 0:
                continue  # TF Serving: 0 means its default, one replay
            raise OptionsError(f"--{spec.name} is not supported by confserve: {spec.refused}")

    @property
    def rest_enabled(self) -> bool:
        return not self.no_rest and self.rest_api_port != 0

    # -- rendering ------------------------------------------------------------------------------------------
    def to_argv(self, *, explicit: Collection[str] = ()) -> list[str]:
        """The `confserve serve` flags that give these options, in declaration order: what the local
        cluster and the renderers write, and what the CLI parses back. Defaults are left out, except the
        fields named in `explicit` (e.g. ports a manifest should show)."""
        unknown = set(explicit) - {spec.name for spec in option_specs()}
        if unknown:
            raise OptionsError(f"no such serve options: {sorted(unknown)}")
        argv = []
        for spec in option_specs():
            value = getattr(self, spec.name)
            if value is None or (value == spec.default and spec.name not in explicit):
                continue
            if spec.kind is bool:
                argv.append(f"--{spec.name}")
            else:
                argv.append(f"--{spec.name}={value}")
        return argv

    def replace(self, **changes: Any) -> ServeOptions:
        return dataclasses.replace(self, **changes)

    # -- the replica configuration file ---------------------------------------------------------------------
    def to_toml(self, *, comment: str = "") -> str:
        """A replica configuration file (docs/server.md, "Replica configuration"): the options that differ
        from the defaults, one `name = value` line each; `from_toml` reads it back to equal options."""
        import tomli_w  # noqa: PLC0415 - only writers of configurations need it

        values = {
            spec.name: getattr(self, spec.name)
            for spec in option_specs()
            if not spec.cli_only and getattr(self, spec.name) not in (None, spec.default)
        }
        header = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
        return header + tomli_w.dumps(values)

    @classmethod
    def from_toml(cls, data: bytes, *, where: str = "replica configuration") -> dict[str, Any]:
        """The options a configuration file sets (name -> value), checked against the declarations:
        unknown names, wrong types and out-of-range values are refused with the name. Returns a mapping,
        so the command line can overlay its own flags before building ServeOptions."""
        import tomllib  # noqa: PLC0415

        if len(data) > MAX_CONFIG_BYTES:
            raise OptionsError(f"{where} is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise OptionsError(f"{where} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise OptionsError(f"{where} is not valid TOML: {exc}") from None
        specs = {spec.name: spec for spec in option_specs() if not spec.cli_only}
        values: dict[str, Any] = {}
        for name, value in doc.items():
            spec = specs.get(name)
            if spec is None:
                raise OptionsError(f"{where}: unknown option {name!r} (the names are serve's flags)")
            values[name] = _checked(spec, value, where)
        return values


# A configuration names a few dozen options; bound what is parsed from a file the host could swap.
MAX_CONFIG_BYTES: Final = 64 * 1024


def _checked(spec: OptionSpec, raw: object, where: str) -> Any:
    """`raw` from a configuration file, of the option's type and within its range."""
    kind = spec.kind
    converted = float(raw) if kind is float and type(raw) is int else raw
    if type(converted) is not kind:
        raise OptionsError(f"{where}: {spec.name} must be a {kind.__name__}, not {type(raw).__name__}")
    value: Any = converted
    if spec.minimum is not None and value < spec.minimum:
        raise OptionsError(f"{where}: {spec.name} must be at least {spec.minimum}")
    if spec.maximum is not None and value > spec.maximum:
        raise OptionsError(f"{where}: {spec.name} must be at most {spec.maximum}")
    if spec.choices is not None and value not in spec.choices:
        raise OptionsError(f"{where}: {spec.name} must be one of {', '.join(spec.choices)}")
    if kind is str and ("\x00" in value or len(value) > 4096):
        raise OptionsError(f"{where}: {spec.name} is not a plain string")
    return value


_KINDS: Final = {"bool": bool, "int": int, "float": float, "str": str, "str | None": str}


def option_specs() -> tuple[OptionSpec, ...]:
    """One OptionSpec per ServeOptions field, in declaration order."""
    specs = []
    for f in dataclasses.fields(ServeOptions):
        meta = dict(f.metadata)
        specs.append(
            OptionSpec(
                name=f.name,
                default=f.default,
                kind=_KINDS[str(f.type)],
                help=meta.pop("help"),
                measured=meta.pop("measured"),
                **meta,
            )
        )
    return tuple(specs)
