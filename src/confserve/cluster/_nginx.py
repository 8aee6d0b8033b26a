"""The load balancer: nginx's stream module in TLS passthrough.

nginx forwards TCP connections to the replicas and never terminates TLS: it holds no key and sees only
ciphertext, as the reference's ingress does. One `server` block per front end (gRPC, REST), each with
its own upstream. Passive health checks: a replica that refuses or drops a connection attempt is marked
failed for `fail_timeout_seconds` after `max_fails` failures, and the connection is retried on the next
replica (`proxy_next_upstream`), so a dead replica is skipped without any client-visible error for new
connections. Connections already open to a replica that dies are lost (a client retries on a new one).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from confserve.errors import ConfserveError, Status

__all__ = [
    "NginxConfig",
    "NginxError",
    "NginxProcess",
    "find_nginx",
    "find_stream_module",
    "parse_hostport",
    "render_nginx",
]

# Debian's libnginx-mod-stream installs the module here; other layouts are searched too.
_STREAM_MODULE_PATHS: Final = (
    "/usr/lib/nginx/modules/ngx_stream_module.so",
    "/usr/lib64/nginx/modules/ngx_stream_module.so",
    "/usr/local/nginx/modules/ngx_stream_module.so",
)


class NginxError(ConfserveError, status=Status.FAILED_PRECONDITION):
    """nginx is missing, or a configuration cannot be rendered."""


def parse_hostport(value: str, *, what: str = "address") -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT`, strictly: nginx configuration is generated from it."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise NginxError(f"{what} {value!r} is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(not (c.isalnum() or c in "-.") for c in host):
            raise NginxError(f"{what} {value!r} has an invalid host") from None
    return host, int(port)


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class NginxConfig:
    """Everything the rendered file depends on. Addresses are HOST:PORT strings."""

    grpc_listen: str
    grpc_backends: Sequence[str]
    run_dir: Path
    rest_listen: str | None = None
    rest_backends: Sequence[str] = field(default_factory=tuple)
    # Passive health checks: one failed connect takes a replica out for 5 s, then nginx tries it again.
    max_fails: int = 1
    fail_timeout_seconds: int = 5
    connect_timeout_seconds: int = 2  # loopback or LAN replicas answer in milliseconds
    # Idle streams (a gRPC channel between requests) stay open up to this long; TF Serving clients keep
    # channels for the process lifetime, so this is generous.
    idle_timeout_seconds: int = 600
    next_upstream_tries: int = 3
    worker_connections: int = 4096
    stream_module: str | None = None  # absolute path of ngx_stream_module.so when it is dynamic


def find_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if path is None:
        raise NginxError("nginx is not installed (Debian: apt-get install nginx-light libnginx-mod-stream)")
    return path


def find_stream_module() -> str | None:
    """Path of the dynamic stream module, or None when nginx has it built in (or it is missing)."""
    return next((p for p in _STREAM_MODULE_PATHS if os.path.exists(p)), None)


def _upstream(name: str, backends: Sequence[str], config: NginxConfig) -> list[str]:
    if not backends:
        raise NginxError(f"no backends for {name}")
    lines = [f"    upstream {name} {{", "        least_conn;"]
    for backend in backends:
        host, port = parse_hostport(backend, what="backend")
        lines.append(
            f"        server {_fmt(host, port)} max_fails={config.max_fails} "
            f"fail_timeout={config.fail_timeout_seconds}s;"
        )
    lines.append("    }")
    return lines


def _server(listen: str, upstream: str, config: NginxConfig) -> list[str]:
    host, port = parse_hostport(listen, what="listen address")
    return [
        "    server {",
        f"        listen {_fmt(host, port)};",
        f"        proxy_pass {upstream};",
        f"        proxy_connect_timeout {config.connect_timeout_seconds}s;",
        f"        proxy_timeout {config.idle_timeout_seconds}s;",
        "        proxy_next_upstream on;",
        f"        proxy_next_upstream_tries {config.next_upstream_tries};",
        "    }",
    ]


def render_nginx(config: NginxConfig) -> str:
    """nginx.conf text for `config` (stream module, TLS passthrough, no http block)."""
    run = config.run_dir.resolve()
    if any(c in str(run) for c in ";{}'\"\n"):
        raise NginxError(f"run directory {run} contains characters nginx cannot take")
    lines = [
        "# Rendered by confserve: TCP/TLS passthrough load balancer. nginx holds no key.",
        f"# Run it with: nginx -p {run} -c THIS_FILE -e {run}/nginx-error.log -g 'daemon off;'",
        "# (drop -g 'daemon off;' to run it in the background; reload after a change with nginx -s reload)",
    ]
    if config.stream_module:
        lines.append(f"load_module {config.stream_module};")
    lines += [
        "worker_processes 1;",
        f"pid {run}/nginx.pid;",
        f"error_log {run}/nginx-error.log warn;",
        f"events {{ worker_connections {config.worker_connections}; }}",
        "stream {",
        "    log_format confserve '$remote_addr [$time_local] $status $bytes_sent $bytes_received "
        "$session_time upstream=$upstream_addr';",
        f"    access_log {run}/nginx-access.log confserve;",
    ]
    lines += _upstream("confserve_grpc", config.grpc_backends, config)
    lines += _server(config.grpc_listen, "confserve_grpc", config)
    if config.rest_listen is not None:
        lines += _upstream("confserve_rest", config.rest_backends, config)
        lines += _server(config.rest_listen, "confserve_rest", config)
    elif config.rest_backends:
        raise NginxError("REST backends given without a REST listen address")
    lines.append("}")
    return "\n".join(lines) + "\n"


class NginxProcess:
    """nginx in the foreground under our control, with its files in `config.run_dir`."""

    def __init__(self, config: NginxConfig, *, nginx: str | None = None) -> None:
        self.config = config
        self._nginx = nginx or find_nginx()
        self._proc: subprocess.Popen[bytes] | None = None
        self.conf_path = config.run_dir / "nginx.conf"

    def _args(self, *extra: str) -> list[str]:
        run = str(self.config.run_dir.resolve())
        return [
            self._nginx,
            "-p",
            run,
            "-c",
            str(self.conf_path.resolve()),
            "-e",
            f"{run}/nginx-error.log",
            *extra,
        ]

    def write(self, config: NginxConfig | None = None) -> None:
        """Render (a new) configuration and check it with `nginx -t` before it replaces the old one."""
        config = config or self.config
        config.run_dir.mkdir(parents=True, exist_ok=True)
        candidate = config.run_dir / "nginx.conf.new"
        candidate.write_text(render_nginx(config))
        run = str(config.run_dir.resolve())
        check = subprocess.run(
            [
                self._nginx,
                "-t",
                "-q",
                "-p",
                run,
                "-c",
                str(candidate.resolve()),
                "-e",
                f"{run}/nginx-error.log",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            candidate.unlink()
            raise NginxError(f"nginx rejected the configuration: {check.stderr.strip()[-400:]}")
        os.replace(candidate, self.conf_path)
        self.config = config

    def start(self, log: Path | None = None) -> None:
        self.write()
        out = open(log or self.config.run_dir / "nginx.out", "ab")  # noqa: SIM115 - owned by the child
        try:
            self._proc = subprocess.Popen(self._args("-g", "daemon off;"), stdout=out, stderr=out)
        finally:
            out.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def reload(self, config: NginxConfig) -> None:
        """Apply a new backend set without dropping open connections (nginx's graceful reload)."""
        self.write(config)
        if self._proc is None:
            raise NginxError("nginx is not running")
        self._proc.send_signal(signal.SIGHUP)

    def stop(self, timeout_seconds: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGQUIT)  # graceful: finish open connections
            try:
                self._proc.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
