"""Gramine-SGX manifest templates for the model server, in two variants.

Theory of operation
-------------------
A Gramine enclave's identity (MRENCLAVE) is the hash of its manifest and of every trusted file the
manifest lists, so everything that decides the enclave's behaviour must be in the manifest or be a trusted
file: the program, every library, the Python packages, the CA that authenticates the key server, the
arguments (`loader.argv`) and the environment (`loader.env`). The host controls nothing else: no argument
from the command line (never `loader.insecure__use_cmdline_argv`), no host environment, no pass-through
("allowed") files. Only two things come from the host, both as encrypted mounts (Gramine protected files,
docs/formats.md#pf) under the key the secret-provisioning service releases after attestation: the model
tree and the TLS configuration (`ssl.cfg`, which holds the server's private key).

Protected files are bound to the host path Gramine opens them under (docs/formats.md#pf-path): a file opened
at `PATH/REST` in an encrypted mount `{path = PATH, uri = "file:URI"}` is checked against the string
`normalize(URI + "/" + REST)`. The mounts are therefore made from the same strings `confserve model encrypt`
and `confserve tls --encrypt-with` bind to: the model's bind root (default: the `--out` path as given, e.g.
`models/digits`) and the ssl.cfg bound path (default `ssl.cfg`), both relative to the directory `gramine-sgx`
runs in. Inside the enclave they appear at `/` + that path.

Variants:

* `confserve`: confserve's own server (Python) under Gramine. It attests with `/dev/attestation`, fetches
  the model key with confserve's secret-provisioning client (retry with backoff, not ready meanwhile) and
  installs it as Gramine key `default` (`SECRET_PROVISION_SET_KEY`, as Gramine's own client does), which
  opens the encrypted mounts; Gramine decrypts and checks every block.
* `tf-serving`: the reference's arrangement, fixed: the real `tensorflow_model_server` with Gramine's
  `libsecret_prov_attest.so` preloaded (SECRET_PROVISION_* variables, docs/formats.md#sp-client), talking to
  confserve's secret-provisioning service; the whole model directory and ssl.cfg are encrypted mounts;
  TF Serving's plaintext REST port is off (it cannot serve TLS).

Releases (docs/releases.md): with `release_public_key` (confserve variant only; TF Serving has no such
check), the owner's release public key is a trusted file and the argv passes `--release_public_key`, so
the replica serves only what a signed release lists, at or above the key service's floor, under a key
lease. A release pins the SHA-256 of each file's *ciphertext*, which Gramine's encrypted mounts never show
the program, so in this mode there are no encrypted mounts: the model tree and ssl.cfg are allowed files
(ciphertext the host may change or withhold, never read as plaintext), the key stays in confserve's
memory, and confserve's own protected-file reader checks every block's MAC and the path binding, reading
them at the bound paths themselves (relative to the enclave's start directory `/`).

The output is a manifest *template* for `gramine-manifest`: plain TOML in which only string values contain
Jinja expressions (`{{ gramine.runtimedir() }}`, `{{ gramine.libos }}`), so it parses with `tomllib`
before and after rendering. Sizes (enclave size, threads) are derived from the model size and the flags
by `plan_enclave`; the reasoning is written into the manifest as comments.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

from confserve.cluster._k8s_common import SECRET_PROV_ALIAS, SECRET_PROV_PORT
from confserve.errors import ConfserveError, Status
from confserve.replica import OptionsError, ServeOptions

__all__ = [
    "VARIANTS",
    "EnclavePlan",
    "GramineConfig",
    "GramineError",
    "plan_enclave",
    "render_gramine_manifest",
    "server_argv",
]

Variant = Literal["confserve", "tf-serving"]
VARIANTS: Final[tuple[Variant, ...]] = get_args(Variant)

MIB: Final = 1 << 20
# Gramine's internal threads: IPC, async, one TLS-handshake helper, plus the main thread
# (manifest-syntax.rst, "Number of threads": "should be set to at least 4").
_GRAMINE_HELPER_THREADS: Final = 4
# Runtime memory before any model. Gramine copies every mapped trusted file into enclave memory in full,
# so shared libraries count by file size, not by resident pages. confserve: TensorFlow 2.21's
# libtensorflow_cc.so.2 (1046 MiB) and libtensorflow_framework.so.2 (156 MiB) plus the ~640 MiB a Python
# process has resident after importing TensorFlow and confserve (measured on the development machine),
# rounded up. tensorflow_model_server: one binary of a few hundred MiB plus glibc, rounded up.
_BASELINE_MIB: Final[dict[Variant, int]] = {"confserve": 2048, "tf-serving": 768}
# Copies of the model held at once while a version loads: confserve reads each file into memory, hands
# it to TensorFlow's in-memory file system and builds the tensors (3); TF Serving reads the files and
# builds the tensors (2). Gramine decrypts block by block, so the mount adds no whole copy.
_MODEL_COPIES: Final[dict[Variant, int]] = {"confserve": 3, "tf-serving": 2}
# Threads the runtime starts besides the request and TensorFlow pools (gRPC completion queues, the
# file-system poller, the provisioning client, TensorFlow housekeeping): an allowance, not a measurement;
# without EDMM a missing slot makes thread creation fail, so it errs high.
_RUNTIME_THREADS: Final = 16
_HEADROOM_MIB: Final = 256  # request buffers and allocator slack (a ResNet-50 batch of 8 is ~5 MiB)
_STACK_MIB: Final = 2  # sys.stack.size; also the default stack of every thread the app creates
_SAFE: Final = re.compile(r"[A-Za-z0-9._/-]+")
_SERVERS_RE: Final = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}([,; ][A-Za-z0-9.-]+:[0-9]{1,5})*")


class GramineError(ConfserveError, status=Status.INVALID_ARGUMENT):
    """A manifest cannot be rendered from these settings."""


@dataclass(frozen=True)
class GramineConfig:
    """Everything a manifest depends on. Host paths are relative to the directory gramine-sgx runs in."""

    variant: Variant
    model_name: str
    model_bind_root: str  # `confserve model encrypt --out` as given (or its --bind-root), e.g. models/digits
    model_bytes: int  # plaintext size of the model tree (all versions the server keeps loaded)
    ssl_config_bound_path: str = "ssl.cfg"  # `confserve tls ... --bound-path`
    secret_prov_servers: str = f"{SECRET_PROV_ALIAS}:{SECRET_PROV_PORT}"  # the name the k8s overlays give it
    # The CA that authenticates the key server. A trusted file: were it host-controlled, the host could
    # stand in for the key server and make the enclave accept a key (and so a model and TLS key) it chose.
    secret_prov_ca: str = "/etc/confserve/secret-prov-ca.crt"  # noqa: S105 - a path
    key_name: str = "default"  # Gramine key of the encrypted mounts = secret the service releases
    grpc_port: int = 8500
    rest_port: int = 8501  # confserve only (TLS); TF Serving's REST is plaintext and stays off
    # gRPC request threads: confserve's pool (its default; sizing only) or TF Serving's --grpc_max_threads.
    grpc_threads: int = 16
    rest_threads: int = 8  # confserve's REST worker pool (its default)
    intra_op_threads: int = 2
    inter_op_threads: int = 2
    batch_threads: int = 0  # >0 enables batching with this many batch threads
    file_system_poll_wait_seconds: int = 5
    isv_prod_id: int = 1
    isv_svn: int = 1
    edmm: bool = False  # SGX2 dynamic memory: enclave pages are added on demand
    arch_libdir: str = "/lib/x86_64-linux-gnu"
    python: str = "/usr/local/bin/python3.11"  # the image's interpreter (python:3.11-slim layout)
    python_lib: str = "/usr/local/lib"  # libpython, stdlib, site-packages (confserve, TensorFlow)
    tf_serving: str = "/usr/bin/tensorflow_model_server"
    # The owner's release public key (`confserve release gen-key`: release.pub.pem) at this path in the
    # image; a trusted file, so its content is measured. None: no release checks (docs/releases.md).
    release_public_key: str | None = None


@dataclass(frozen=True)
class EnclavePlan:
    enclave_size_bytes: int
    max_threads: int
    reasons: tuple[str, ...]


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _size_text(n: int) -> str:
    return f"{n >> 30}G" if n % (1 << 30) == 0 else f"{n >> 20}M"


def plan_enclave(config: GramineConfig) -> EnclavePlan:
    """Enclave size and thread slots for `config`, with one line of reasoning per term."""
    _check_counts(config)
    v = config.variant
    app_threads = (
        config.grpc_threads + config.intra_op_threads + config.inter_op_threads + config.batch_threads
    )
    if v == "confserve":
        app_threads += config.rest_threads
    threads = _GRAMINE_HELPER_THREADS + _RUNTIME_THREADS + app_threads
    model_mib = -(-config.model_bytes // MIB)
    model_term = _MODEL_COPIES[v] * model_mib
    stacks = threads * _STACK_MIB
    need_mib = _BASELINE_MIB[v] + model_term + stacks + _HEADROOM_MIB
    size = _next_power_of_two(need_mib * MIB)
    reasons = (
        f"runtime before any model: {_BASELINE_MIB[v]} MiB (mapped trusted libraries are copied in full)",
        f"model: {_MODEL_COPIES[v]} copies x {model_mib} MiB = {model_term} MiB while a version loads",
        f"threads: {threads} = {_GRAMINE_HELPER_THREADS} Gramine + {_RUNTIME_THREADS} runtime + {app_threads}"
        " request/TensorFlow pools (grpc, rest, intra-op, inter-op, batching)",
        f"stacks: {threads} x {_STACK_MIB} MiB = {stacks} MiB; headroom {_HEADROOM_MIB} MiB",
        f"total {need_mib} MiB, rounded up to a power of two as SGX requires: {_size_text(size)}"
        + (" (EDMM: an upper bound, pages are added on demand)" if config.edmm else " (committed at start)"),
    )
    return EnclavePlan(enclave_size_bytes=size, max_threads=threads, reasons=reasons)


def _check_counts(config: GramineConfig) -> None:
    counts = {
        "model size": config.model_bytes,
        "grpc threads": config.grpc_threads - 1,
        "rest threads": config.rest_threads - 1,
        "intra-op threads": config.intra_op_threads - 1,
        "inter-op threads": config.inter_op_threads - 1,
        "batch threads": config.batch_threads,
        "poll seconds": config.file_system_poll_wait_seconds,
    }
    for what, value in counts.items():
        if value < 0:
            raise GramineError(f"{what} out of range")
    for what, port in (("gRPC port", config.grpc_port), ("REST port", config.rest_port)):
        if not 0 < port < 65536:
            raise GramineError(f"{what} {port} out of range")
    for what, number in (("ISV product ID", config.isv_prod_id), ("ISV SVN", config.isv_svn)):
        if not 0 <= number <= 0xFFFF:
            raise GramineError(f"{what} {number} out of range 0..65535")


def _bound(path: str, what: str) -> str:
    """A bound path exactly as `confserve model encrypt`/`tls` store it: normalised, no `..`."""
    norm = posixpath.normpath(path) if path else ""
    if (
        not path
        or norm != path.rstrip("/")
        or norm in (".", "/")
        or path.startswith("./")
        or ".." in norm.split("/")
        or "//" in path
        or not _SAFE.fullmatch(path)
    ):
        raise GramineError(
            f"{what} {path!r} must be a normalised path (letters, digits, . _ - /; no '..'), as bound"
        )
    return norm


def _abs_path(path: str, what: str) -> str:
    if not path.startswith("/") or not _SAFE.fullmatch(path) or posixpath.normpath(path) != path:
        raise GramineError(f"{what} {path!r} must be a normalised absolute path")
    return path


def _release_key_path(path: str) -> str:
    """An absolute file path in the image whose directory can be mounted (never the root itself)."""
    _abs_path(path, "release public key path")
    if posixpath.dirname(path) == "/":
        raise GramineError(f"release public key path {path!r} must be in a directory, not at /")
    return path


def _in_enclave(bound: str) -> str:
    return bound if bound.startswith("/") else "/" + bound


def server_argv(config: GramineConfig) -> list[str]:
    """The program's argv, fixed in the manifest (measured). Flag names: see docs/deployment.md."""
    model_bound = _bound(config.model_bind_root, "model bind root")
    ssl_bound = _bound(config.ssl_config_bound_path, "ssl.cfg bound path")
    model_path, ssl_path = _in_enclave(model_bound), _in_enclave(ssl_bound)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", config.model_name):
        raise GramineError(f"model name {config.model_name!r} is not a plain name")
    batching = config.batch_threads > 0
    if config.variant == "tf-serving":
        if config.release_public_key is not None:
            raise GramineError(
                "the release public key needs the confserve variant: tensorflow_model_server has no "
                "release check (docs/releases.md)"
            )
        return [
            "tensorflow_model_server",
            f"--model_name={config.model_name}",
            f"--model_base_path={model_path}",
            f"--port={config.grpc_port}",
            "--rest_api_port=0",  # TF Serving's REST has no TLS: a plaintext path to the model, so off
            f"--ssl_config_file={ssl_path}",
            f"--grpc_max_threads={config.grpc_threads}",
            f"--enable_batching={'true' if batching else 'false'}",
            f"--tensorflow_intra_op_parallelism={config.intra_op_threads}",
            f"--tensorflow_inter_op_parallelism={config.inter_op_threads}",
            f"--file_system_poll_wait_seconds={config.file_system_poll_wait_seconds}",
        ]
    release_key = ssl_bound_arg = None
    if config.release_public_key is not None:
        # confserve reads the ciphertext itself (no encrypted mounts): open the files at the bound paths,
        # relative to the start directory "/", so its path binding compares the strings they were bound to.
        model_path, ssl_path, ssl_bound_arg = model_bound, ssl_bound, ssl_bound
        release_key = _release_key_path(config.release_public_key)
    options = ServeOptions(
        attestation="gramine",
        secret_provision_servers=config.secret_prov_servers,
        secret_provision_ca_chain_path=config.secret_prov_ca,
        secret_provision_secret_name=config.key_name,
        model_name=config.model_name,
        model_base_path=model_path,
        port=config.grpc_port,
        rest_api_port=config.rest_port,
        ssl_config_file=ssl_path,
        file_system_poll_wait_seconds=config.file_system_poll_wait_seconds,
        ssl_config_bound_path=ssl_bound_arg,
        release_public_key=release_key,
    )
    try:
        serve_argv = options.validate().to_argv(
            explicit=("port", "rest_api_port", "file_system_poll_wait_seconds")
        )
    except OptionsError as exc:
        raise GramineError(f"these settings make no valid confserve serve command: {exc}") from None
    return [
        posixpath.basename(config.python),
        "-I",  # isolated: no PYTHON* variables, no user site, no script directory on sys.path
        "-B",  # trusted files are read-only: never try to write bytecode
        "-c",
        "from confserve.cli import main; main()",
        "serve",
        *serve_argv,
    ]


def _s(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value)


def _mount(path: str, uri: str, kind: str = "chroot", key: str | None = None) -> str:
    parts = [f"path = {_s(path)}", f"uri = {_s('file:' + uri)}"]
    if kind != "chroot":
        parts.insert(0, f"type = {_s(kind)}")
    if key is not None:
        parts.append(f"key_name = {_s(key)}")
    return "  { " + ", ".join(parts) + " },"


def render_gramine_manifest(config: GramineConfig) -> str:
    """The manifest template text for `config` (TOML; feed it to gramine-manifest)."""
    if config.variant not in VARIANTS:
        raise GramineError(f"unknown variant {config.variant!r} (choose from {', '.join(VARIANTS)})")
    plan = plan_enclave(config)
    argv = server_argv(config)
    arch = _abs_path(config.arch_libdir, "arch libdir")
    ca = _abs_path(config.secret_prov_ca, "secret-prov CA path")
    if not _SERVERS_RE.fullmatch(config.secret_prov_servers):
        raise GramineError(f"secret-prov servers {config.secret_prov_servers!r} is not a HOST:PORT list")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", config.key_name):
        raise GramineError(f"key name {config.key_name!r} is not a plain name")
    model = _bound(config.model_bind_root, "model bind root")
    ssl_cfg = _bound(config.ssl_config_bound_path, "ssl.cfg bound path")
    tf = config.variant == "tf-serving"
    program = _abs_path(config.tf_serving if tf else config.python, "program")
    release_key = config.release_public_key  # checked by server_argv (absolute, confserve variant)

    lines = [
        f"# Gramine manifest template: {config.variant} model server, model {config.model_name!r}.",
        "# Rendered by `confserve render gramine`; build with gramine-manifest, gramine-sgx-sign (see",
        "# docs/deployment.md). Every setting here is measured into MRENCLAVE: a change is a new identity.",
        "",
        'loader.entrypoint.uri = "file:{{ gramine.libos }}"',
        f"libos.entrypoint = {_s(program)}",
        'loader.log_level = "error"  # higher levels may leak data (manifest-syntax.rst)',
        "",
        "# Arguments fixed here, never taken from the host (the reference took them from the command line,",
        "# so the host could restart the same measured enclave without TLS or with another model).",
        "loader.argv = [",
        *(f"  {_s(a)}," for a in argv),
        "]",
        "",
        "# Environment fixed here; nothing passes through from the host.",
    ]
    lib_path = f"/lib:{arch}:/usr{arch}"
    if not tf:
        lib_path += f":{config.python_lib}"
    env: list[tuple[str, str]] = [("LD_LIBRARY_PATH", lib_path)]
    threads = str(config.intra_op_threads)
    env += [("OMP_NUM_THREADS", threads), ("MKL_NUM_THREADS", threads)]
    if tf:
        env += [
            ("LD_PRELOAD", "libsecret_prov_attest.so"),  # in Gramine's runtime dir: a trusted file
            ("SECRET_PROVISION_CONSTRUCTOR", "1"),  # provision before main(); any failure exits
            ("SECRET_PROVISION_SET_KEY", config.key_name),  # 16 bytes -> /dev/attestation/keys/NAME
            ("SECRET_PROVISION_SERVERS", config.secret_prov_servers),
            ("SECRET_PROVISION_CA_CHAIN_PATH", ca),
        ]
    else:
        env += [
            # TensorFlow's pools (read by TensorFlow itself) and the Gramine key the released secret is
            # installed as (Gramine's variable, read by confserve's client) so the encrypted mounts open.
            ("TF_NUM_INTRAOP_THREADS", threads),
            ("TF_NUM_INTEROP_THREADS", str(config.inter_op_threads)),
        ]
        if release_key is None:
            env.append(("SECRET_PROVISION_SET_KEY", config.key_name))
        env += [
            ("HOME", "/tmp"),  # noqa: S108 - Keras and TensorFlow caches go to the enclave's tmpfs
            ("TF_CPP_MIN_LOG_LEVEL", "2"),
        ]
    lines += [f"loader.env.{name} = {_s(value)}" for name, value in env]
    lines += [
        "",
        "# Kubernetes stops a pod with SIGTERM: let the server drain. The host can inject it at any time,",
        "# which only stops the enclave (the host can always do that).",
        "sys.enable_sigterm_injection = true",
        "# DNS for the key server's name: resolv.conf from the host, sanitised by Gramine. No host /etc.",
        "sys.enable_extra_runtime_domain_names_conf = true",
        "# A child process would be a second enclave with its own EPC; the servers need none.",
        "sys.disallow_subprocesses = true",
        f'sys.stack.size = "{_STACK_MIB}M"',
        "",
        "fs.mounts = [",
        _mount("/lib", "{{ gramine.runtimedir() }}"),
        _mount(arch, arch),
        _mount("/usr" + arch, "/usr" + arch),
    ]
    if tf:
        lines.append(_mount(program, program))
    else:
        lines += [_mount(program, program), _mount(config.python_lib, config.python_lib)]
    lines += _measured_dir_mounts(ca, release_key)
    lines.append('  { type = "tmpfs", path = "/tmp" },')
    lines += _host_data_mounts(config, model, ssl_cfg)
    lines += [
        "sgx.debug = false  # production enclave: the host cannot read its memory with a debugger",
        'sgx.remote_attestation = "dcap"',
        f"sgx.isvprodid = {config.isv_prod_id}",
        f"sgx.isvsvn = {config.isv_svn}",
        f"sgx.edmm_enable = {'true' if config.edmm else 'false'}",
        "# Sizing (confserve render gramine --model-dir/--model-size and the thread flags):",
        *(f"#   {reason}" for reason in plan.reasons),
        f'sgx.enclave_size = "{_size_text(plan.enclave_size_bytes)}"',
        f"sgx.max_threads = {plan.max_threads}",
        "",
        "# Every code file is trusted (hashed into the measurement); nothing is an allowed file.",
        "sgx.trusted_files = [",
        '  "file:{{ gramine.libos }}",',
        '  "file:{{ gramine.runtimedir() }}/",',
        f"  {_s('file:' + arch + '/')},",
        f"  {_s('file:/usr' + arch + '/')},",
        f"  {_s('file:' + program)},",
    ]
    if not tf:
        lines.append(f"  {_s('file:' + config.python_lib + '/')},")
    lines.append(f"  {_s('file:' + ca)},")
    if release_key is not None:
        lines.append(f"  {_s('file:' + release_key)},  # the owner's release public key: measured")
    lines.append("]")
    if release_key is not None:
        lines += [
            "",
            "# Ciphertext only, never plaintext: confserve's protected-file reader checks every block's",
            "# MAC and path binding, and the signed release pins each file's SHA-256 (docs/releases.md).",
            "sgx.allowed_files = [",
            f"  {_s('file:' + model + '/')},",
            f"  {_s('file:' + ssl_cfg)},",
            "]",
        ]
    lines.append("")
    return "\n".join(lines)


def _measured_dir_mounts(ca: str, release_key: str | None) -> list[str]:
    """The directories of the files whose content is part of the identity (each a trusted file)."""
    dirs = [posixpath.dirname(ca)]
    if release_key is not None and posixpath.dirname(release_key) not in dirs:
        dirs.append(posixpath.dirname(release_key))
    return [_mount(d, d) for d in dirs]


def _host_data_mounts(config: GramineConfig, model: str, ssl_cfg: str) -> list[str]:
    """The mounts of the model tree and ssl.cfg, and what follows the mount list."""
    if config.release_public_key is None:
        return [
            "  # The only host data: encrypted, bound to these host paths (docs/formats.md#pf-path),",
            "  # opened with the key the secret-provisioning service releases after attestation.",
            _mount(_in_enclave(model), model, "encrypted", config.key_name),
            _mount(_in_enclave(ssl_cfg), ssl_cfg, "encrypted", config.key_name),
            "]",
            "",
        ]
    return [
        "  # The only host data: protected files as ciphertext (allowed files, below). confserve checks",
        "  # each against the signed release and decrypts it in memory with the released key.",
        _mount(_in_enclave(model), model),
        _mount(_in_enclave(ssl_cfg), ssl_cfg),
        "]",
        "",
        "# confserve opens the files at their bound (relative) paths: they resolve from here.",
        'fs.start_dir = "/"',
        "",
    ]
