"""Secret provisioning end to end on loopback: simulated enclaves, the real TLS stack, the audit log.

Every refusal test checks what the client actually received: no secret byte, and for a Gramine request
no byte at all. Nothing here waits on a fixed sleep: blocking calls have timeouts, progress is awaited
with events or by polling a counter with a bound.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from confserve.attestation import (
    AllowRule,
    Collateral,
    EnclaveIdentity,
    Policy,
    RaTlsFormat,
    SimCollateralSettings,
    SimPlatform,
    SimulatedAttester,
    StaticCollateralSource,
    TrustConfig,
    create_ratls_credentials,
)
from confserve.provisioning import (
    GRAMINE_REQUEST,
    GRAMINE_RESPONSE_PREFIX,
    ClientSettings,
    ConfigError,
    ProtocolError,
    ProvisioningError,
    RefusedError,
    SecretProvisioningClient,
    SecretProvisioningServer,
    SecretStore,
    ServerAddress,
    ServerLimits,
    ServerSettings,
    TlsError,
    UnavailableError,
    fetch_wrap_key,
    policy_from_file,
    verify_audit_log,
)
from confserve.provisioning._decision import iso_time
from confserve.provisioning._protocol import EXT_REQUEST_MAGIC, EXT_RESPONSE_MAGIC, ClientConnection
from confserve.provisioning._tls import TlsChannel, client_context

NOW = int(time.time())
WRAP_KEY = bytes.fromhex("8f0e7a1c2b3d4e5f60718293a4b5c6d7")
TLS_KEY = b"-----BEGIN PRIVATE KEY----- (a model TLS key) -----END PRIVATE KEY-----"
OTHER = b"another tenant's secret"
SECRETS = {"default": WRAP_KEY, "tls-key": TLS_KEY, "other": OTHER}
MR_ENCLAVE = bytes.fromhex("11" * 32)
MR_SIGNER = bytes.fromhex("22" * 32)
GOOD = EnclaveIdentity(mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER, isv_prod_id=1, isv_svn=5)
POLICY = Policy(
    rules=(
        AllowRule(
            name="model-server",
            mr_enclave=MR_ENCLAVE,
            mr_signer=MR_SIGNER,
            isv_prod_id=1,
            min_isv_svn=5,
            secrets=("default", "tls-key"),
        ),
        AllowRule(name="other-tenant", mr_enclave=bytes.fromhex("33" * 32), secrets=("other",)),
    ),
    allow_simulated=True,
)
FAST = ServerLimits(
    handshake_timeout_seconds=3.0, read_timeout_seconds=3.0, rate_limit_per_second=0, max_connections=64
)


# -- fixtures ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    chain: tuple[x509.Certificate, ...]
    key: Any
    ca_certs: tuple[x509.Certificate, ...]


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    chain = tuple(x509.load_pem_x509_certificates(b"".join(b.bytes() for b in issued.cert_chain_pems)))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    return Pki(ca, chain, key, (x509.load_pem_x509_certificate(ca.cert_pem.bytes()),))


@pytest.fixture(scope="module")
def platform() -> SimPlatform:
    return SimPlatform.create(now=NOW)


def settings_for(
    pki: Pki,
    platform: SimPlatform,
    audit: Path | None,
    *,
    policy: Policy | Callable[[], Policy] = POLICY,
    secrets: dict[str, bytes] | None = None,
    clock: Callable[[], int] = lambda: NOW,
    limits: ServerLimits = FAST,
    port: int = 0,
    metrics: bool = False,
) -> ServerSettings:
    collateral = StaticCollateralSource(Collateral.from_json(platform.collateral_json))
    store = SecretStore(SECRETS if secrets is None else secrets)
    return ServerSettings(
        certificate_chain=pki.chain,
        private_key=pki.key,
        policy=policy if callable(policy) else (lambda: policy),
        secrets=lambda: store,
        collateral=lambda: collateral,
        trust=TrustConfig.simulated(platform.root_ca_der),
        listen_port=port,
        audit_log=audit,
        audit_fsync=False,
        metrics_host="127.0.0.1" if metrics else None,
        limits=limits,
        clock=clock,
    )


@contextlib.contextmanager
def running(settings: ServerSettings) -> Iterator[SecretProvisioningServer]:
    server = SecretProvisioningServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def server(pki: Pki, platform: SimPlatform, audit: Path) -> Iterator[SecretProvisioningServer]:
    with running(settings_for(pki, platform, audit, metrics=True)) as srv:
        yield srv


def client_for(
    pki: Pki,
    server: SecretProvisioningServer | str,
    attester: Any,
    **options: Any,
) -> SecretProvisioningClient:
    servers = server if isinstance(server, str) else f"localhost:{server.address[1]}"
    options.setdefault("deadline_seconds", 10.0)
    options.setdefault("initial_backoff_seconds", 0.02)
    settings = ClientSettings(
        servers=tuple(ServerAddress(h, int(p)) for h, p in (item.split(":") for item in servers.split(","))),
        ca_certificates=pki.ca_certs,
        **options,
    )
    return SecretProvisioningClient(settings, attester)


def raw_session(
    address: tuple[str, int],
    credentials: tuple[x509.Certificate, Any] | None,
    payload: bytes,
    pki: Pki,
    *,
    close_after_send: bool = False,
    source: str | None = None,
) -> bytes:
    """A TLS session with an arbitrary client certificate and payload (from `source`, an address of
    127.0.0.0/8, if given); every byte received."""
    bind = (source, 0) if source is not None else None
    sock = socket.create_connection(("127.0.0.1", address[1]), timeout=5, source_address=bind)
    if credentials is None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.get_cert_store().add_cert(__import__("OpenSSL").crypto.X509.from_cryptography(pki.ca_certs[0]))  # type: ignore[union-attr]
        ctx.set_verify(SSL.VERIFY_PEER)
    else:
        ctx = client_context(pki.ca_certs, credentials[0], credentials[1])
    channel = TlsChannel(sock, ctx, server_side=False, server_hostname="localhost")
    deadline = time.monotonic() + 8
    received = b""
    try:
        channel.handshake(deadline)
        channel.sendall(payload, deadline)
        if close_after_send:
            sock.shutdown(socket.SHUT_WR)
        while True:
            data = channel.recv(deadline)
            if not data:
                break
            received += data
    except (TlsError, UnavailableError):
        pass
    finally:
        sock.close()
    return received


def ratls(platform: SimPlatform, identity: EnclaveIdentity = GOOD, **kw: Any) -> tuple[x509.Certificate, Any]:
    creds = create_ratls_credentials(SimulatedAttester(platform, identity, **kw), RaTlsFormat.TCG_DICE)
    return creds.certificate, creds.private_key


def audit_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def only_summary(path: Path) -> dict[str, Any]:
    """The audit log holds exactly one entry, the summary of refused unauthenticated peers."""
    entries = audit_entries(path)
    assert [e["kind"] for e in entries] == ["unauthenticated_summary"], entries
    assert verify_audit_log(path).ok
    return entries[0]


def assert_no_secret(received: bytes) -> None:
    for value in SECRETS.values():
        assert value not in received


def good_client_works(pki: Pki, server: SecretProvisioningServer, platform: SimPlatform) -> None:
    got = client_for(pki, server, SimulatedAttester(platform, GOOD)).request(["default"])
    assert got == {"default": WRAP_KEY}


# -- releases --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(RaTlsFormat))
def test_approved_identity_gets_exactly_its_secrets(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer, audit: Path, fmt: RaTlsFormat
) -> None:
    client = client_for(pki, server, SimulatedAttester(platform, GOOD), ratls_format=fmt)
    assert client.request() == {"default": WRAP_KEY, "tls-key": TLS_KEY}
    assert client.request(["tls-key"]) == {"tls-key": TLS_KEY}
    assert client.request(gramine=True) == {"default": WRAP_KEY}
    entries = audit_entries(audit)
    assert [e["outcome"] for e in entries] == ["released"] * 3
    first = entries[0]
    assert first["secrets"] == ["default", "tls-key"]
    assert first["identity"] == {
        "mr_enclave": MR_ENCLAVE.hex(),
        "mr_signer": MR_SIGNER.hex(),
        "isv_prod_id": 1,
        "isv_svn": 5,
    }
    assert first["tcb_status"] == "UpToDate"
    assert first["simulated"] is True
    assert first["rule"] == "model-server"
    assert first["protocol"] == "confserve"
    assert entries[2]["protocol"] == "gramine"
    text = audit.read_text()
    assert WRAP_KEY.hex() not in text
    assert "a model TLS key" not in text
    assert verify_audit_log(audit).ok


def test_gramine_raw_request_gets_gramine_layout(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer
) -> None:
    received = raw_session(server.address, ratls(platform), GRAMINE_REQUEST, pki)
    assert received[:37] == GRAMINE_RESPONSE_PREFIX
    assert received[37:41] == len(WRAP_KEY).to_bytes(4, "big")
    assert received[41:] == WRAP_KEY
    assert len(received) == 41 + 16


def test_legacy_rsa_client_over_tls12(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer
) -> None:
    creds = create_ratls_credentials(SimulatedAttester(platform, GOOD), RaTlsFormat.LEGACY_RSA)
    sock = socket.create_connection(("127.0.0.1", server.address[1]), timeout=5)
    ctx = client_context(pki.ca_certs, creds.certificate, creds.private_key)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)  # what a Gramine v1.3.1 (mbedTLS 3.2.1) client speaks
    channel = TlsChannel(sock, ctx, server_side=False, server_hostname="localhost")
    deadline = time.monotonic() + 8
    channel.handshake(deadline)
    assert channel.connection.get_protocol_version_name() == "TLSv1.2"
    channel.sendall(GRAMINE_REQUEST, deadline)
    received = b""
    while data := channel.recv(deadline):
        received += data
    sock.close()
    assert received == GRAMINE_RESPONSE_PREFIX + b"\x00\x00\x00\x10" + WRAP_KEY


def test_fetch_wrap_key_and_provision_key(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer
) -> None:
    client = client_for(pki, server, SimulatedAttester(platform, GOOD), set_key="default")
    settings = client._settings
    assert fetch_wrap_key(settings, SimulatedAttester(platform, GOOD)).raw() == WRAP_KEY
    installed: dict[str, bytes] = {}

    class FakeKeys:
        def install(self, name: str, key: bytes) -> None:
            installed[name] = key

    client.provision_key(FakeKeys())
    assert installed == {"default": WRAP_KEY}
    client.provision_key(FakeKeys(), key_name="pf_key", gramine=True)
    assert installed == {"default": WRAP_KEY, "pf_key": WRAP_KEY}
    assert fetch_wrap_key(settings, SimulatedAttester(platform, GOOD), gramine=True).raw() == WRAP_KEY
    with pytest.raises(ProtocolError, match="16-byte"):  # one check for both: fetch_wrap_key
        client.provision_key(FakeKeys(), secret_name="tls-key")
    with pytest.raises(ProtocolError, match="16-byte"):
        fetch_wrap_key(settings, SimulatedAttester(platform, GOOD), "tls-key")
    no_key = client_for(pki, server, SimulatedAttester(platform, GOOD))
    with pytest.raises(ConfigError):
        no_key.provision_key(FakeKeys())


# -- refusals ------------------------------------------------------------------------------------------


def _refusal_case(
    pki: Pki,
    audit: Path,
    settings: ServerSettings,
    attester_platform: SimPlatform,
    identity: EnclaveIdentity,
    category: str,
    reason: str,
    *,
    authenticated: bool = True,
    **attester_kw: Any,
) -> None:
    """Three refused sessions. An authenticated peer's refusals get an audit entry each; refusals of a peer
    whose evidence did not verify are counted into one summary entry (written at the latest on stop)."""
    with running(settings) as srv:
        for payload in (GRAMINE_REQUEST, EXT_REQUEST_MAGIC + b"\x00"):
            received = raw_session(
                srv.address, ratls(attester_platform, identity, **attester_kw), payload, pki
            )
            assert_no_secret(received)
            if payload == GRAMINE_REQUEST:
                assert received == b""  # Gramine's way: close without a byte
            else:
                assert received.startswith(EXT_RESPONSE_MAGIC + b"\x01")
        with pytest.raises(RefusedError):
            client_for(pki, srv, SimulatedAttester(attester_platform, identity, **attester_kw)).request()
        assert _metric(srv, "confserve_secret_prov_refusals_total", f'reason="{category}"') == 3
        if not authenticated:
            assert audit_entries(audit) == []  # nothing per session, while the server runs
    if not authenticated:
        summary = only_summary(audit)
        assert summary["counts"] == {"session": {category: 3}}
        assert summary["total"] == 3
        assert summary["peers"] == {"127.0.0.1": 3}
        assert any(reason in detail for detail in summary["details"])
        return
    entries = audit_entries(audit)
    assert len(entries) == 3
    for entry in entries:
        assert entry["kind"] == "session"
        assert entry["outcome"] == "refused"
        assert entry["category"] == category
        assert reason in entry["reason"]
        assert "secrets" not in entry
    assert verify_audit_log(audit).ok


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (dataclasses.replace(GOOD, mr_enclave=b"\x44" * 32), "mr_enclave"),
        (dataclasses.replace(GOOD, mr_signer=b"\x55" * 32), "mr_signer not in allow list"),
        (dataclasses.replace(GOOD, isv_svn=4), "isv_svn 4 below minimum 5"),
        (dataclasses.replace(GOOD, isv_prod_id=2), "isv_prod_id 2"),
    ],
)
def test_wrong_identity_refused(
    pki: Pki, platform: SimPlatform, audit: Path, identity: EnclaveIdentity, reason: str
) -> None:
    _refusal_case(pki, audit, settings_for(pki, platform, audit), platform, identity, "policy", reason)


def test_debug_enclave_refused(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    _refusal_case(
        pki,
        audit,
        settings_for(pki, platform, audit),
        platform,
        GOOD,
        "attestation",
        "ebug",
        authenticated=False,
        debug=True,
    )


def test_simulated_evidence_refused_without_allow_simulated(
    pki: Pki, platform: SimPlatform, audit: Path
) -> None:
    strict = dataclasses.replace(POLICY, allow_simulated=False)
    _refusal_case(
        pki, audit, settings_for(pki, platform, audit, policy=strict), platform, GOOD, "policy", "simulated"
    )


def test_disallowed_tcb_status_refused(pki: Pki, audit: Path) -> None:
    outdated = SimPlatform.create(now=NOW, settings=SimCollateralSettings(tcb_status="OutOfDate"))
    _refusal_case(
        pki, audit, settings_for(pki, outdated, audit), outdated, GOOD, "policy", "TCB status OutOfDate"
    )
    assert audit_entries(audit)[0]["tcb_status"] == "OutOfDate"


def test_expired_collateral_refused(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    later = NOW + 31 * 86400  # the simulated collateral lives 30 days
    settings = settings_for(pki, platform, audit, clock=lambda: later)
    _refusal_case(pki, audit, settings, platform, GOOD, "attestation", "CrlExpired", authenticated=False)


def test_quote_from_untrusted_platform_refused(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    rogue = SimPlatform.create(now=NOW)
    _refusal_case(
        pki,
        audit,
        settings_for(pki, platform, audit),
        rogue,
        GOOD,
        "attestation",
        "does not end at the trusted root",
        authenticated=False,
    )


def test_name_not_granted_refused(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer, audit: Path
) -> None:
    client = client_for(pki, server, SimulatedAttester(platform, GOOD))
    with pytest.raises(RefusedError, match="secret not granted"):
        client.request(["default", "other"])
    received = raw_session(server.address, ratls(platform), ClientConnection(["other"]).request_bytes(), pki)
    assert_no_secret(received)
    entry = audit_entries(audit)[-1]
    assert entry["category"] == "not_granted"
    assert "'other' not granted" in entry["reason"]


def _self_signed(key: Any, extensions: list[x509.Extension[Any]] = ()) -> x509.Certificate:  # type: ignore[assignment]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(__import__("datetime").datetime(2001, 1, 1))
        .not_valid_after(__import__("datetime").datetime(2030, 12, 31))
    )
    for ext in extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(key, hashes.SHA256())


def test_plain_x509_certificate_refused(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    with running(settings_for(pki, platform, audit)) as srv:
        received = raw_session(srv.address, (_self_signed(key), key), GRAMINE_REQUEST, pki)
        assert received == b""
        good_client_works(pki, srv, platform)
    released, summary = audit_entries(audit)
    assert released["outcome"] == "released"
    assert summary["kind"] == "unauthenticated_summary"
    assert summary["counts"] == {"session": {"attestation": 1}}
    assert "identity" not in summary
    assert any("not an RA-TLS certificate" in detail for detail in summary["details"])


def test_certificate_whose_key_does_not_match_its_quote_refused(
    pki: Pki, platform: SimPlatform, audit: Path
) -> None:
    """A genuine quote copied into another key's certificate (quotes are public): not authenticated."""
    genuine, _ = ratls(platform)
    key = ec.generate_private_key(ec.SECP384R1())  # the attacker's own key, with a copied quote
    forged = _self_signed(
        key, [e for e in genuine.extensions if isinstance(e.value, x509.UnrecognizedExtension)]
    )
    with running(settings_for(pki, platform, audit)) as srv:
        received = raw_session(srv.address, (forged, key), EXT_REQUEST_MAGIC + b"\x00", pki)
        assert_no_secret(received)
        assert received.startswith(EXT_RESPONSE_MAGIC + b"\x01")
    summary = only_summary(audit)
    assert summary["counts"] == {"session": {"attestation": 1}}
    assert any("does not match" in detail for detail in summary["details"])


def test_client_without_certificate_refused(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer, audit: Path
) -> None:
    received = raw_session(server.address, None, GRAMINE_REQUEST, pki)
    assert received == b""
    good_client_works(pki, server, platform)
    assert _metric(server, "confserve_secret_prov_handshake_failures_total", 'reason="tls"') >= 1
    assert all(e["outcome"] == "released" for e in audit_entries(audit))


# -- malformed input and slow clients ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "close", "reason"),
    [
        (b"SECRET_PROVISION_RA_TLS_REQUEST_V2\x00", False, "not a secret-provisioning request"),
        (GRAMINE_REQUEST + b"extra", False, "unexpected bytes"),
        (EXT_REQUEST_MAGIC + b"\x00" + b"A" * 5000, False, "too long"),
        (GRAMINE_REQUEST[:20], True, "middle of the request"),
        (b"", True, "without a request"),
    ],
)
def test_malformed_requests_refused_and_server_stays_up(
    pki: Pki,
    platform: SimPlatform,
    server: SecretProvisioningServer,
    audit: Path,
    payload: bytes,
    close: bool,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="confserve.provisioning"):
        received = raw_session(server.address, ratls(platform), payload, pki, close_after_send=close)
    assert_no_secret(received)
    entry = audit_entries(audit)[-1]
    assert entry["category"] == "protocol"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # handled, not an unexpected error
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert reason in entry["reason"]
    assert entry["identity"]["mr_enclave"] == MR_ENCLAVE.hex()  # attested, but the request was bad
    good_client_works(pki, server, platform)


def _client_hello_only(port: int) -> socket.socket:
    """A TLS client that sends its ClientHello and then never answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    conn.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        conn.do_handshake()
    sock.sendall(conn.bio_read(65536))
    return sock


def test_silent_and_stalled_clients_do_not_block_others(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    limits = dataclasses.replace(FAST, handshake_timeout_seconds=1.5)
    with running(settings_for(pki, platform, audit, limits=limits, metrics=True)) as srv:
        port = srv.address[1]
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # connects, sends nothing
        stalled = _client_hello_only(port)  # never finishes the handshake
        good_client_works(pki, srv, platform)  # served while both hold their connections
        # Both are closed by the server's handshake deadline (recv returns EOF, bounded by the timeout).
        for sock in (silent, stalled):
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass
            sock.close()
        assert (
            _metric(srv, "confserve_secret_prov_handshake_failures_total", 'reason="timeout_or_closed"') == 2
        )
        good_client_works(pki, srv, platform)


def test_silent_client_after_handshake_times_out(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    limits = dataclasses.replace(FAST, read_timeout_seconds=1.0)
    with running(settings_for(pki, platform, audit, limits=limits)) as srv:
        cert, key = ratls(platform)
        sock = socket.create_connection(("127.0.0.1", srv.address[1]), timeout=10)
        channel = TlsChannel(sock, client_context(pki.ca_certs, cert, key), server_side=False)
        deadline = time.monotonic() + 8
        channel.handshake(deadline)
        assert channel.recv(deadline) == b""  # the server gives up on the request and closes
        sock.close()
    entry = audit_entries(audit)[-1]
    assert entry["category"] == "timeout"


def _idle(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection from `source` (127.0.0.0/8 is all loopback on Linux) that never sends a byte."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset); False while it is held open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_address_limit_and_rate_limit(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    limits = dataclasses.replace(FAST, max_pending_per_address=1)
    with running(settings_for(pki, platform, audit, limits=limits, metrics=True)) as srv:
        holder = _idle(srv.address[1])
        _wait_for(lambda: _metric(srv, "confserve_secret_prov_pending_connections", "") == 1)
        with pytest.raises(UnavailableError):  # 127.0.0.1 holds its one unauthenticated connection
            client_for(pki, srv, SimulatedAttester(platform, GOOD), deadline_seconds=0.5).request()
        assert _metric(srv, "confserve_secret_prov_connections_rejected_total", 'reason="address_limit"') >= 1
        received = raw_session(srv.address, ratls(platform), GRAMINE_REQUEST, pki, source="127.0.0.2")
        assert received.endswith(WRAP_KEY)  # another address is served meanwhile
        holder.close()
        _wait_for(lambda: _metric(srv, "confserve_secret_prov_pending_connections", "") == 0)
        good_client_works(pki, srv, platform)
    limits = dataclasses.replace(FAST, rate_limit_per_second=0.001, rate_limit_burst=2)
    with running(settings_for(pki, platform, None, limits=limits, metrics=True)) as srv:
        good_client_works(pki, srv, platform)
        good_client_works(pki, srv, platform)
        with pytest.raises(UnavailableError):
            client_for(pki, srv, SimulatedAttester(platform, GOOD), deadline_seconds=0.3).request()
        assert _metric(srv, "confserve_secret_prov_connections_rejected_total", 'reason="rate_limited"') >= 1


def test_full_stage_evicts_the_oldest_connection_of_the_largest_holder(
    pki: Pki, platform: SimPlatform, audit: Path
) -> None:
    limits = dataclasses.replace(FAST, max_pending_connections=3, max_pending_per_address=2)
    with running(settings_for(pki, platform, audit, limits=limits, metrics=True)) as srv:
        port = srv.address[1]
        flood = [_idle(port, "127.0.0.2"), _idle(port, "127.0.0.2"), _idle(port, "127.0.0.3")]
        _wait_for(lambda: _metric(srv, "confserve_secret_prov_pending_connections", "") == 3)
        good_client_works(pki, srv, platform)  # admitted in place of 127.0.0.2's oldest connection
        assert _metric(srv, "confserve_secret_prov_connections_rejected_total", 'reason="evicted"') == 1
        _wait_for(lambda: _closed_by_server(flood[0]))
        assert not _closed_by_server(flood[1])
        assert not _closed_by_server(flood[2])
        for sock in flood:
            sock.close()


def test_sessions_wait_for_a_free_worker_and_a_full_stage_refuses(
    pki: Pki, platform: SimPlatform, audit: Path
) -> None:
    collateral = StaticCollateralSource(Collateral.from_json(platform.collateral_json))
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def get(self, quote: bytes, now: int) -> Collateral:
            entered.set()
            assert release.wait(20)
            return collateral.get(quote, now)

    limits = dataclasses.replace(FAST, max_connections=1, max_pending_connections=1)
    settings = dataclasses.replace(
        settings_for(pki, platform, audit, limits=limits, metrics=True), collateral=Slow
    )
    with running(settings) as srv, concurrent.futures.ThreadPoolExecutor(2) as pool:
        client = client_for(pki, srv, SimulatedAttester(platform, GOOD))
        first = pool.submit(client.request, ["default"])
        assert entered.wait(20)  # the only worker is busy verifying
        second = pool.submit(client_for(pki, srv, SimulatedAttester(platform, GOOD)).request, ["default"])
        _wait_for(lambda: _metric(srv, "confserve_secret_prov_waiting_connections", "") == 1)
        third = _idle(srv.address[1], "127.0.0.2")  # nothing to evict: every connection waits for a worker
        _wait_for(lambda: _closed_by_server(third))
        third.close()
        assert (
            _metric(srv, "confserve_secret_prov_connections_rejected_total", 'reason="connection_limit"') == 1
        )
        release.set()
        assert first.result(timeout=20) == {"default": WRAP_KEY}
        assert second.result(timeout=20) == {"default": WRAP_KEY}


def test_idle_flood_from_three_addresses_does_not_starve_enclaves(
    pki: Pki, platform: SimPlatform, audit: Path
) -> None:
    """Issue 13 F3: idle connections from three addresses, many more than there are workers, are held open
    while enclaves get their keys within their deadline (the defaults otherwise: 32 per address, 512)."""
    limits = ServerLimits(rate_limit_per_second=0, max_connections=4)
    with running(settings_for(pki, platform, audit, limits=limits, metrics=True)) as srv:
        port = srv.address[1]
        flood = [_idle(port, f"127.0.0.{2 + i % 3}") for i in range(120)]
        try:
            _wait_for(
                lambda: (
                    _metric(srv, "confserve_secret_prov_connections_rejected_total", 'reason="address_limit"')
                    == 24
                )
            )
            assert _metric(srv, "confserve_secret_prov_pending_connections", "") == 96

            def enclave(_: int) -> dict[str, bytes]:
                return client_for(pki, srv, SimulatedAttester(platform, GOOD), deadline_seconds=3).request(
                    ["default"]
                )

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                assert list(pool.map(enclave, range(8))) == [{"default": WRAP_KEY}] * 8
            assert sum(_closed_by_server(sock) for sock in flood) == 24  # the idle ones are still held
        finally:
            for sock in flood:
                sock.close()
    entries = audit_entries(audit)
    assert [e["outcome"] for e in entries[:8]] == ["released"] * 8
    assert entries[8]["counts"]["connection"] == {"address_limit": 24}


def _log_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.name.startswith("confserve.provisioning"))


def test_floods_grow_the_logs_by_a_bounded_number_of_lines(
    pki: Pki, platform: SimPlatform, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 F6: N rejected connections, N failed handshakes and N unverifiable certificates add the same
    few lines to the log and the audit log whatever N is, and the summary counts every one of them."""
    key = ec.generate_private_key(ec.SECP384R1())
    plain = (_self_signed(key), key)
    limits = dataclasses.replace(FAST, max_pending_per_address=1)

    def flood(n: int) -> tuple[int, list[dict[str, Any]]]:
        audit = tmp_path / f"audit-{n}.log"
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="confserve.provisioning"):
            with running(settings_for(pki, platform, audit, limits=limits)) as srv:
                holder = _idle(srv.address[1], "127.0.0.2")
                for _ in range(n):
                    assert raw_session(srv.address, None, GRAMINE_REQUEST, pki) == b""
                    assert raw_session(srv.address, plain, GRAMINE_REQUEST, pki) == b""
                    over = _idle(srv.address[1], "127.0.0.2")  # over 127.0.0.2's cap of 1
                    _wait_for(lambda: _closed_by_server(over))  # noqa: B023 - used at once
                    over.close()
                good_client_works(pki, srv, platform)
                holder.close()
            lines = _log_lines(caplog)
        assert verify_audit_log(audit).ok
        return lines, audit_entries(audit)

    few_lines, few_entries = flood(3)
    many_lines, many_entries = flood(30)
    assert many_lines == few_lines
    assert many_lines <= 12
    assert [e["kind"] for e in many_entries] == ["session", "unauthenticated_summary"]
    assert len(few_entries) == len(many_entries)
    summary = many_entries[1]
    assert summary["counts"] == {
        "connection": {"address_limit": 30},
        "handshake": {"timeout_or_closed": 1, "tls": 30},
        "session": {"attestation": 30},
    }
    assert summary["peers"] == {"127.0.0.1": 60, "127.0.0.2": 31}


def test_refusals_are_summarised_once_per_interval(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    now = [NOW]
    limits = dataclasses.replace(FAST, refusal_summary_seconds=60)
    with running(settings_for(pki, platform, audit, clock=lambda: now[0], limits=limits)) as srv:
        for _ in range(3):
            raw_session(srv.address, None, GRAMINE_REQUEST, pki)
        assert audit_entries(audit) == []
        now[0] += 60
        _wait_for(lambda: len(audit_entries(audit)) == 1)  # written by the stage's periodic tick
        first = audit_entries(audit)[0]
        raw_session(srv.address, None, GRAMINE_REQUEST, pki)
    second = audit_entries(audit)[1]
    assert first["counts"] == {"handshake": {"tls": 3}}
    assert (first["since"], first["time"]) == (iso_time(NOW), iso_time(NOW + 60))
    assert second["counts"] == {"handshake": {"tls": 1}}
    assert verify_audit_log(audit).entries == 2


# -- concurrency, failover, restart, reload ---------------------------------------------------------------


def test_fifty_concurrent_clients(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer, audit: Path
) -> None:
    def one(i: int) -> dict[str, bytes]:
        ident = GOOD if i % 5 else dataclasses.replace(GOOD, mr_enclave=b"\x44" * 32)
        try:
            return client_for(pki, server, SimulatedAttester(platform, ident), deadline_seconds=60).request()
        except RefusedError:
            return {}

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert sum(1 for r in results if r == {"default": WRAP_KEY, "tls-key": TLS_KEY}) == 40
    assert sum(1 for r in results if r == {}) == 10
    result = verify_audit_log(audit)
    assert result.ok
    assert result.entries == 50
    assert _metric(server, "confserve_secret_prov_releases_total", 'protocol="confserve"') == 40


def test_failover_to_second_server(pki: Pki, platform: SimPlatform, server: SecretProvisioningServer) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        dead = closed.getsockname()[1]
        client = client_for(
            pki, f"127.0.0.1:{dead},localhost:{server.address[1]}", SimulatedAttester(platform, GOOD)
        )
        assert client.request(["default"]) == {"default": WRAP_KEY}
        assert client.attempts == 2


def test_deadline_when_all_servers_are_down(pki: Pki, platform: SimPlatform) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = client_for(pki, f"127.0.0.1:{port}", SimulatedAttester(platform, GOOD), deadline_seconds=0.5)
        with pytest.raises(UnavailableError, match="no secret-provisioning server answered"):
            client.request()
        assert client.attempts >= 2  # retried with backoff


@pytest.mark.parametrize(("interval", "expected_lines"), [(60.0, 1), (0.001, 2)])
def test_waiting_client_says_so(
    pki: Pki, platform: SimPlatform, caplog: pytest.LogCaptureFixture, interval: float, expected_lines: int
) -> None:
    """A replica waiting for its key logs attempt, reason and time left: on the first failed round, then
    at most every progress_interval_seconds."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = client_for(
            pki,
            f"127.0.0.1:{port}",
            SimulatedAttester(platform, GOOD),
            deadline_seconds=0.6,
            progress_interval_seconds=interval,
        )
        with caplog.at_level(logging.INFO, "confserve.provisioning.client"), pytest.raises(UnavailableError):
            client.request()
    lines = [r.getMessage() for r in caplog.records if r.name == "confserve.provisioning.client"]
    assert len(lines) >= expected_lines
    if expected_lines == 1:
        assert len(lines) == 1  # rate-limited
    assert lines[0].startswith("still waiting for secret provisioning: attempt 1, last: ")
    assert f"127.0.0.1:{port}" in lines[0]
    assert lines[0].endswith(" s left")


def test_server_restart_while_clients_retry(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    with running(settings_for(pki, platform, audit)) as first:
        port = first.address[1]
        good_client_works(pki, first, platform)
    clients = [
        client_for(pki, f"localhost:{port}", SimulatedAttester(platform, GOOD), deadline_seconds=30)
        for _ in range(3)
    ]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(c.request, ["default"]) for c in clients]
        _wait_for(lambda: all(c.attempts >= 2 for c in clients))  # all are retrying against the dead port
        with running(settings_for(pki, platform, audit, port=port)):
            results = [f.result(timeout=30) for f in futures]
    assert results == [{"default": WRAP_KEY}] * 3
    assert verify_audit_log(audit).entries == 4  # the restarted server continued the chain


def test_reload_policy_without_dropping_connections(
    pki: Pki, platform: SimPlatform, audit: Path, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.toml"

    def write_policy(min_svn: int) -> None:
        policy_file.write_text(
            'version = 1\nallow_simulated = true\n[[allow]]\nname = "ms"\n'
            f'mr_enclave = "{MR_ENCLAVE.hex()}"\nmin_isv_svn = {min_svn}\nsecrets = ["default"]\n'
        )

    write_policy(6)
    limits = dataclasses.replace(
        FAST, handshake_timeout_seconds=30
    )  # the held connection waits for the reloads
    policy = policy_from_file(policy_file, ra_config=False)
    settings = settings_for(pki, platform, audit, policy=policy, limits=limits)
    with running(settings) as srv:
        port = srv.address[1]
        with pytest.raises(RefusedError):
            client_for(pki, srv, SimulatedAttester(platform, GOOD)).request()
        held = socket.create_connection(("127.0.0.1", port), timeout=10)  # in flight during the reload
        write_policy(5)
        assert srv.reload()
        assert client_for(pki, srv, SimulatedAttester(platform, GOOD)).request() == {"default": WRAP_KEY}
        policy_file.write_text("version = 2\n")  # broken: the previous policy stays in force
        assert not srv.reload()
        assert client_for(pki, srv, SimulatedAttester(platform, GOOD)).request() == {"default": WRAP_KEY}
        # The held connection was not dropped by the reloads: it still completes a session.
        creds = ratls(platform)
        channel = TlsChannel(
            held, client_context(pki.ca_certs, *creds), server_side=False, server_hostname="localhost"
        )
        deadline = time.monotonic() + 8
        channel.handshake(deadline)
        channel.sendall(GRAMINE_REQUEST, deadline)
        received = b""
        while data := channel.recv(deadline):
            received += data
        held.close()
        assert received.endswith(WRAP_KEY)
        assert _metric(srv, "confserve_secret_prov_reloads_total", 'result="failed"') == 1


def test_policy_granting_unloaded_secret_is_a_config_error(pki: Pki, platform: SimPlatform) -> None:
    with pytest.raises(ConfigError, match="not loaded: other"):
        SecretProvisioningServer(
            settings_for(pki, platform, None, secrets={"default": WRAP_KEY, "tls-key": TLS_KEY})
        )


def test_audit_failure_refuses(pki: Pki, platform: SimPlatform, server: SecretProvisioningServer) -> None:
    log = server.audit_log
    assert log is not None
    import os

    os.close(log._fd)
    log._fd = os.open(os.devnull, os.O_RDONLY)  # every write now fails
    with pytest.raises(RefusedError, match="internal error"):
        client_for(pki, server, SimulatedAttester(platform, GOOD)).request()
    assert _metric(server, "confserve_secret_prov_refusals_total", 'reason="audit"') == 1


def test_client_verifies_the_server(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer
) -> None:
    other_ca = trustme.CA()
    wrong_ca = ClientSettings(
        servers=(ServerAddress("localhost", server.address[1]),),
        ca_certificates=(x509.load_pem_x509_certificate(other_ca.cert_pem.bytes()),),
        deadline_seconds=5,
    )
    client = SecretProvisioningClient(wrong_ca, SimulatedAttester(platform, GOOD))
    with pytest.raises(TlsError, match="handshake failed"):
        client.request()
    assert client.attempts == 1  # not retried


def test_client_checks_the_host_name(pki: Pki, platform: SimPlatform) -> None:
    issued = pki.ca.issue_cert("localhost")  # no 127.0.0.1 in the SAN
    chain = tuple(x509.load_pem_x509_certificates(b"".join(b.bytes() for b in issued.cert_chain_pems)))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    settings = dataclasses.replace(
        settings_for(pki, platform, None), certificate_chain=chain, private_key=key
    )
    with running(settings) as srv:
        misnamed = client_for(pki, f"127.0.0.1:{srv.address[1]}", SimulatedAttester(platform, GOOD))
        with pytest.raises(TlsError, match="does not match host name"):
            misnamed.request()
        good_client_works(pki, srv, platform)


def test_metrics_and_health(pki: Pki, platform: SimPlatform, server: SecretProvisioningServer) -> None:
    good_client_works(pki, server, platform)
    assert server.metrics_address is not None
    base = f"http://127.0.0.1:{server.metrics_address[1]}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'confserve_secret_prov_releases_total{protocol="confserve"} 1.0' in body
    assert "confserve_secret_prov_handshake_seconds_bucket" in body
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{base}/nope", timeout=5)


# -- helpers -----------------------------------------------------------------------------------------


def _metric(server: SecretProvisioningServer, name: str, labels: str) -> float:
    from prometheus_client import generate_latest

    wanted = f"{name}{{{labels}}}" if labels else name
    for line in generate_latest(server.registry).decode().splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a condition (bounded): progress of other threads, not a fixed delay."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        event.wait(0.01)


# -- edges -------------------------------------------------------------------------------------------


def test_client_sending_a_chain_is_refused(pki: Pki, platform: SimPlatform, audit: Path) -> None:
    cert, key = ratls(platform)
    extra, _ = ratls(platform)
    with running(settings_for(pki, platform, audit)) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.address[1]), timeout=5)
        ctx = client_context(pki.ca_certs, cert, key)
        ctx.add_extra_chain_cert(extra)
        channel = TlsChannel(sock, ctx, server_side=False, server_hostname="localhost")
        deadline = time.monotonic() + 8
        channel.handshake(deadline)
        channel.sendall(GRAMINE_REQUEST, deadline)
        assert channel.recv(deadline) == b""
        sock.close()
    summary = only_summary(audit)
    assert summary["counts"] == {"session": {"certificate": 1}}
    assert any("2 certificates" in detail for detail in summary["details"])


def test_unexpected_verifier_error_fails_closed(
    pki: Pki, platform: SimPlatform, audit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def get(self, quote: bytes, now: int) -> Collateral:
            raise RuntimeError("collateral backend exploded")

    settings = dataclasses.replace(settings_for(pki, platform, audit), collateral=Broken)
    with running(settings) as srv, pytest.raises(RefusedError, match="attestation failed"):
        client_for(pki, srv, SimulatedAttester(platform, GOOD)).request()
    assert only_summary(audit)["counts"] == {"session": {"internal": 1}}
    logged = [r for r in caplog.records if r.getMessage() == "verifier raised unexpectedly"]
    assert logged
    assert logged[0].exc_info is not None  # with its traceback, for the bug report


def test_server_chain_with_intermediate(pki: Pki, platform: SimPlatform) -> None:
    child = pki.ca.create_child_ca()
    issued = child.issue_cert("localhost")
    chain = tuple(x509.load_pem_x509_certificates(b"".join(b.bytes() for b in issued.cert_chain_pems)))
    assert len(chain) == 2
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    settings = dataclasses.replace(
        settings_for(pki, platform, None), certificate_chain=chain, private_key=key
    )
    with running(settings) as srv:
        good_client_works(pki, srv, platform)


def test_client_cancel_and_attester_failure(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer
) -> None:
    cancel = threading.Event()
    cancel.set()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        settings = ClientSettings(
            servers=(ServerAddress("127.0.0.1", closed.getsockname()[1]),), ca_certificates=pki.ca_certs
        )
        with pytest.raises(UnavailableError, match="cancelled"):
            SecretProvisioningClient(settings, SimulatedAttester(platform, GOOD), cancel=cancel).request()

    class NoQuotes:
        simulated = True

        def quote(self, report_data: bytes) -> bytes:
            from confserve.attestation import AttestationError

            raise AttestationError("quoting enclave unavailable")

    with pytest.raises(ProvisioningError, match="cannot create the RA-TLS certificate"):
        client_for(pki, server, NoQuotes()).request()


def test_server_lifecycle_errors(pki: Pki, platform: SimPlatform) -> None:
    server = SecretProvisioningServer(settings_for(pki, platform, None))
    with pytest.raises(ProvisioningError, match="not started"):
        _ = server.address
    assert server.metrics_address is None
    with server:
        port = server.address[1]
        taken = dataclasses.replace(settings_for(pki, platform, None), listen_port=port)
        with pytest.raises(ConfigError, match="cannot listen"):
            SecretProvisioningServer(taken).start()
        busy_metrics = dataclasses.replace(
            settings_for(pki, platform, None), metrics_host="127.0.0.1", metrics_port=port
        )
        other = SecretProvisioningServer(busy_metrics)
        with pytest.raises(ConfigError, match="for metrics"):
            other.start()
        other.stop()


def test_intel_trust_refuses_simulated_quotes(
    pki: Pki, platform: SimPlatform, audit: Path, testvectors: Path
) -> None:
    """Without a simulated platform the server trusts Intel's root only (real collateral from the vectors)."""
    from confserve.provisioning import collateral_from_file

    settings = dataclasses.replace(
        settings_for(pki, platform, audit),
        trust=TrustConfig.intel(),
        collateral=collateral_from_file(testvectors / "dcap" / "sgx_quote_collateral.json"),
    )
    with running(settings) as srv:
        received = raw_session(srv.address, ratls(platform), GRAMINE_REQUEST, pki)
    assert received == b""
    summary = only_summary(audit)
    assert summary["counts"] == {"session": {"attestation": 1}}
    assert any("trusted root" in detail for detail in summary["details"]), summary["details"]


def test_a_bug_in_a_session_is_contained(
    pki: Pki, platform: SimPlatform, server: SecretProvisioningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = server._audit_and_reply
    calls = [0]

    def broken(*args: Any) -> bytes:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("bug")
        return original(*args)

    monkeypatch.setattr(server, "_audit_and_reply", broken)
    received = raw_session(server.address, ratls(platform), GRAMINE_REQUEST, pki)
    assert received == b""  # nothing released, connection closed
    good_client_works(pki, server, platform)
    _wait_for(lambda: _metric(server, "confserve_secret_prov_active_connections", "") == 0)


def test_a_bug_in_the_admission_stage_is_contained(
    pki: Pki,
    platform: SimPlatform,
    server: SecretProvisioningServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from confserve.provisioning import _admission

    original = _admission.PreAuthSession.receive_data
    calls = [0]

    def broken(self: _admission.PreAuthSession, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("bug")
        original(self, data)

    monkeypatch.setattr(_admission.PreAuthSession, "receive_data", broken)
    received = raw_session(server.address, ratls(platform), GRAMINE_REQUEST, pki)
    assert received == b""  # that connection is closed, nothing released
    good_client_works(pki, server, platform)  # the stage goes on
    assert any("unexpected error in the pre-authentication stage" in r.getMessage() for r in caplog.records)
