"""`confserve secret-prov`: init, serve (as a real process: SIGHUP reload, SIGTERM), request, audit-verify."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from confserve.attestation import EnclaveIdentity, SimPlatform, SimulatedAttester
from confserve.cli import main
from confserve.cli._secret_prov import request_identity
from confserve.provisioning import (
    ClientSettings,
    RefusedError,
    SecretProvisioningClient,
    SecretProvisioningServer,
    ServerLimits,
    ServerSettings,
    collateral_from_sim_platform,
    load_certificate_chain,
    load_private_key,
    policy_from_file,
    secrets_from_files,
    trust_for_sim_platform,
)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A service directory (init), a simulated platform and an enclave signing key."""
    base = tmp_path_factory.mktemp("sp")
    assert run("secret-prov", "init", base / "svc").exit_code == 0
    assert run("sim-platform", "init", base / "plat").exit_code == 0
    assert run("measure", "gen-signing-key", base / "enclave.pem").exit_code == 0
    return base


def measured_identity(workdir: Path, *extra: str) -> dict[str, Any]:
    result = run(
        "measure", "--signing-key", workdir / "enclave.pem", "--entry-point", "confserve secret-prov request",
        "--json", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def write_ra_config(path: Path, identity: dict[str, Any]) -> None:
    entry = {k: str(identity[k]) for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")}
    switches = {f"verify_{k}": "on" for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")}
    path.write_text(json.dumps({**switches, "mrs": [entry]}))


# -- init -----------------------------------------------------------------------------------------


def test_init_files_modes_and_names(tmp_path: Path) -> None:
    target = tmp_path / "svc"
    result = run(
        "secret-prov", "init", target, "--hostname", "attestation.service.com", "--hostname", "10.0.0.7"
    )
    assert result.exit_code == 0, result.output
    modes = {
        name: (target / name).stat().st_mode & 0o777
        for name in ("ca.crt", "server.crt", "server.key", "wrap_key")
    }
    assert modes == {"ca.crt": 0o644, "server.crt": 0o644, "server.key": 0o600, "wrap_key": 0o600}
    assert target.stat().st_mode & 0o777 == 0o700
    assert len((target / "wrap_key").read_bytes()) == 16
    cert = load_certificate_chain(str(target / "server.crt"))[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["attestation.service.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    ca = load_certificate_chain(str(target / "ca.crt"))[0]
    cert.verify_directly_issued_by(ca)
    load_private_key(str(target / "server.key"))
    assert (target / "wrap_key").read_bytes().hex() not in result.output
    again = run("secret-prov", "init", target)
    assert again.exit_code == 1
    assert "not replacing" in again.stderr


def test_init_defaults_to_this_machines_name(tmp_path: Path) -> None:
    import socket

    result = run("secret-prov", "init", tmp_path / "svc")
    assert result.exit_code == 0, result.output
    cert = load_certificate_chain(str(tmp_path / "svc" / "server.crt"))[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == list(dict.fromkeys([socket.gethostname(), "localhost"]))
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert "clients must use one" in result.output


# -- request against an in-process server -----------------------------------------------------------------


@contextlib.contextmanager
def library_server(
    workdir: Path, ra_config: Path, audit: Path | None = None
) -> Iterator[SecretProvisioningServer]:
    svc, plat = workdir / "svc", workdir / "plat"
    settings = ServerSettings(
        certificate_chain=tuple(load_certificate_chain(str(svc / "server.crt"))),
        private_key=load_private_key(str(svc / "server.key")),
        policy=policy_from_file(ra_config, ra_config=True, allow_simulated=True),
        secrets=secrets_from_files((("default", svc / "wrap_key"),)),
        collateral=collateral_from_sim_platform(plat),
        trust=trust_for_sim_platform(plat),
        listen_port=0,
        audit_log=audit,
        audit_fsync=False,
        limits=ServerLimits(rate_limit_per_second=0),
    )
    server = SecretProvisioningServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_request_presents_the_measured_identity(workdir: Path, tmp_path: Path) -> None:
    identity = measured_identity(workdir)
    assert request_identity((workdir / "enclave.pem").read_bytes(), 0, 0) == EnclaveIdentity(
        mr_enclave=bytes.fromhex(identity["mr_enclave"]),
        mr_signer=bytes.fromhex(identity["mr_signer"]),
        isv_prod_id=0,
        isv_svn=0,
    )
    ra_config = tmp_path / "ra_config.json"
    write_ra_config(ra_config, identity)
    audit = tmp_path / "audit.log"
    with library_server(workdir, ra_config, audit) as server:
        port = server.address[1]
        common = ("secret-prov", "request", "--servers", f"localhost:{port}",
                  "--ca", workdir / "svc" / "ca.crt", "--sim-platform", workdir / "plat",
                  "--signing-key", workdir / "enclave.pem")  # fmt: skip
        out = tmp_path / "out"
        result = run(*common, "--out", out)
        assert result.exit_code == 0, result.output
        assert "verdict: released 1 secret(s)" in result.stdout
        assert "default: 16 bytes" in result.stdout
        assert identity["mr_enclave"] in result.stdout
        key = (workdir / "svc" / "wrap_key").read_bytes()
        assert key.hex() not in result.output
        assert (out / "default").read_bytes() == key
        assert (out / "default").stat().st_mode & 0o777 == 0o600
        gramine = run(*common, "--gramine", "--name", "default", "--ratls-format", "gramine-1.3")
        assert gramine.exit_code == 0, gramine.output
        refused = run(*common, "--isv-svn", "1")
        assert refused.exit_code == 1
        assert "verdict: refused" in refused.stdout
        missing_key = run("secret-prov", "request", "--servers", f"localhost:{port}", "--ca",
                          workdir / "svc" / "ca.crt", "--sim-platform", workdir / "plat")  # fmt: skip
        assert missing_key.exit_code == 2
    verify = run("secret-prov", "audit-verify", audit)
    assert verify.exit_code == 0
    assert "ok: 3 entries" in verify.stdout


def test_request_without_simulation_needs_gramine(workdir: Path) -> None:
    result = run("secret-prov", "request", "--servers", "localhost:1", "--ca", workdir / "svc" / "ca.crt")
    assert result.exit_code == 1
    assert "not inside Gramine" in result.stderr


def test_audit_verify_reports_the_broken_entry(workdir: Path, tmp_path: Path) -> None:
    ra_config = tmp_path / "ra_config.json"
    write_ra_config(ra_config, measured_identity(workdir))
    audit = tmp_path / "audit.log"
    with library_server(workdir, ra_config, audit) as server:
        settings = ClientSettings.from_files(f"localhost:{server.address[1]}", workdir / "svc" / "ca.crt")
        attester = SimulatedAttester(
            SimPlatform.load(workdir / "plat"), request_identity((workdir / "enclave.pem").read_bytes(), 0, 0)
        )
        for _ in range(3):
            SecretProvisioningClient(settings, attester).request()
    head = run("secret-prov", "audit-verify", audit).stdout.split()[-1]
    lines = audit.read_text().splitlines(keepends=True)
    audit.write_text(lines[0] + lines[2])
    result = run("secret-prov", "audit-verify", audit)
    assert result.exit_code == 1
    assert "broken at line 2" in result.stdout
    audit.write_text("".join(lines[:2]))
    assert run("secret-prov", "audit-verify", audit).exit_code == 0
    assert run("secret-prov", "audit-verify", audit, "--expected-head", head).exit_code == 1
    assert run("secret-prov", "audit-verify", tmp_path / "missing").exit_code == 1


# -- serve as a process ---------------------------------------------------------------------------------


def _reader(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _expect(lines: queue.Queue[str], prefix: str) -> str:
    while True:
        line = lines.get(timeout=60)
        if line.startswith(prefix):
            return line.strip()


def _metric(metrics_url: str, name: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def test_serve_process_reloads_on_sighup_and_stops_on_sigterm(workdir: Path, tmp_path: Path) -> None:
    identity = measured_identity(workdir)
    ra_config = tmp_path / "ra_config.json"
    write_ra_config(ra_config, {**identity, "isv_svn": 1})  # approves svn 1 only, at first
    audit = tmp_path / "audit.log"
    svc = workdir / "svc"
    process = subprocess.Popen(
        [sys.executable, "-c", "from confserve.cli import main; main()", "secret-prov", "serve",
         "--listen", "127.0.0.1:0", "--cert", str(svc / "server.crt"), "--key", str(svc / "server.key"),
         "--ra-config", str(ra_config), "--secret", f"default={svc / 'wrap_key'}",
         "--sim-platform", str(workdir / "plat"), "--allow-simulated", "--audit-log", str(audit),
         "--metrics-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        port = int(_expect(lines, "listening on").rsplit(":", 1)[1])
        metrics_url = _expect(lines, "metrics on").split()[-1]
        settings = ClientSettings.from_files(f"localhost:{port}", svc / "ca.crt", deadline_seconds=20)
        attester = SimulatedAttester(
            SimPlatform.load(workdir / "plat"), request_identity((workdir / "enclave.pem").read_bytes(), 0, 0)
        )
        with pytest.raises(RefusedError):
            SecretProvisioningClient(settings, attester).request()
        write_ra_config(ra_config, identity)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _metric(metrics_url, 'confserve_secret_prov_reloads_total{result="ok"}') < 1:
            assert time.monotonic() < deadline, "reload not observed"
            threading.Event().wait(0.02)
        got = SecretProvisioningClient(settings, attester).request()
        assert got == {"default": (svc / "wrap_key").read_bytes()}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert _expect(lines, "stopped") == "stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=30)  # EOF once the process is gone
        process.stdout.close()
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["outcome"] for e in entries] == ["refused", "released"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ra-config", "a.json", "--policy", "b.toml", "--secret", "default=x"], "exactly one of"),
        (["--policy", "b.toml"], "at least one --secret"),
        (["--policy", "b.toml", "--secret", "default=x", "--allow-simulated"], "needs --sim-platform"),
        (["--policy", "b.toml", "--secret", "default=x"], "--collateral FILE or --pccs-url"),
        (
            ["--policy", "b.toml", "--secret", "default=x", "--collateral", "c", "--pccs-url", "u"],
            "at most one",
        ),
        (["--policy", "b.toml", "--secret", "default=x", "--listen", "nope"], "HOST:PORT"),
        (["--policy", "b.toml", "--secret", "default=x", "--max-pending", "0"], "--max-pending"),
        (["--policy", "b.toml", "--secret", "default=x", "--max-pending-per-address", "0"], "x>=1"),
    ],
)
def test_serve_usage_errors(args: list[str], message: str) -> None:
    result = run("secret-prov", "serve", "--cert", "c.pem", "--key", "k.pem", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_serve_config_errors_exit_1(workdir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "k"
    secret.write_bytes(b"k" * 16)
    os.chmod(secret, 0o644)
    svc = workdir / "svc"
    base = ("secret-prov", "serve", "--listen", "127.0.0.1:0", "--cert", svc / "server.crt",
            "--key", svc / "server.key", "--sim-platform", workdir / "plat",
            "--policy", tmp_path / "none.toml")  # fmt: skip
    result = run(*base, "--secret", f"default={secret}")
    assert result.exit_code == 1
    assert "cannot read policy file" in result.stderr
    (tmp_path / "p.toml").write_text("version = 1\n")
    result = run(*base[:-1], tmp_path / "p.toml", "--secret", f"default={secret}")
    assert result.exit_code == 1
    assert "group or others" in result.stderr
