"""The pre-authentication stage's sans-I/O parts: address keys, the admission table, and the TLS handshake
and request read driven in memory (a client `SSL.Connection` wired back to back, no socket)."""

from __future__ import annotations

import contextlib
import time

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from confserve.attestation import EnclaveIdentity, RaTlsFormat, SimPlatform, SimulatedAttester
from confserve.attestation import create_ratls_credentials as make_credentials
from confserve.provisioning import GRAMINE_REQUEST, RequestKind, SecretRequest
from confserve.provisioning._admission import (
    MAX_PREAUTH_INPUT_BYTES,
    AdmissionTable,
    PreAuthSession,
    PreAuthState,
    admission_key,
)
from confserve.provisioning._decision import ReadFailure
from confserve.provisioning._protocol import EXT_REQUEST_MAGIC
from confserve.provisioning._tls import client_context, server_context

IDENTITY = EnclaveIdentity(mr_enclave=b"\x11" * 32, mr_signer=b"\x22" * 32, isv_prod_id=1, isv_svn=5)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),  # the same /64: one host
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("::ffff:192.0.2.9", "192.0.2.9"),  # IPv4-mapped: the IPv4 address
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
    ],
)
def test_admission_key(address: str, key: str) -> None:
    assert admission_key(address) == key


def test_table_counts_per_key_and_evicts_from_the_largest_holder() -> None:
    table = AdmissionTable()
    for conn, key in enumerate(["a", "b", "b", "c", "b", "a"]):
        table.add(conn, key)
    assert table.total == 6
    assert (table.count("a"), table.count("b"), table.count("c"), table.count("z")) == (2, 3, 1, 0)
    assert table.victim() == 1  # b holds the most: its oldest
    table.remove(1)
    assert table.count("b") == 2
    assert table.victim() == 0  # a and b hold 2 each: a's oldest (0) is older than b's (2)
    table.mark_ready(0)
    assert table.victim() == 2  # a ready connection is never evicted; b (2 held) has the oldest busy one
    assert table.count("a") == 2  # ready ones still count against their key
    table.remove(1)  # removing twice is harmless
    with pytest.raises(ValueError, match="already"):
        table.add(2, "b")


def test_table_has_no_victim_when_every_connection_waits_for_a_worker() -> None:
    table = AdmissionTable()
    assert table.victim() is None
    table.add(7, "a")
    table.mark_ready(7)
    assert table.victim() is None
    table.remove(7)
    assert table.total == 0
    assert table.count("a") == 0


# -- PreAuthSession, in memory ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contexts() -> tuple[SSL.Context, list[x509.Certificate], object]:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    chain = x509.load_pem_x509_certificates(b"".join(b.bytes() for b in issued.cert_chain_pems))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    platform = SimPlatform.create(now=int(time.time()))
    credentials = make_credentials(SimulatedAttester(platform, IDENTITY), RaTlsFormat.TCG_DICE)
    ca_certs = [x509.load_pem_x509_certificate(ca.cert_pem.bytes())]
    client = client_context(ca_certs, credentials.certificate, credentials.private_key)
    return server_context(chain, key), ca_certs, client  # type: ignore[arg-type]


def drain(connection: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += connection.bio_read(65536)
        except SSL.WantReadError:
            return out


def handshake(client_ctx: SSL.Context, server_ctx: SSL.Context) -> tuple[SSL.Connection, PreAuthSession]:
    """Shuttle bytes between a client and the session until the server side's handshake is done."""
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    session = PreAuthSession(server_ctx)
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        session.receive_data(drain(client))
        if session.state is not PreAuthState.HANDSHAKE:
            return client, session
        client.bio_write(session.data_to_send())
    raise AssertionError("handshake did not complete")


def test_handshake_then_request(contexts: tuple[SSL.Context, list[x509.Certificate], SSL.Context]) -> None:
    server_ctx, _, client_ctx = contexts
    client, session = handshake(client_ctx, server_ctx)
    assert session.state is PreAuthState.REQUEST
    assert session.connection.get_peer_certificate() is not None
    for byte in range(len(GRAMINE_REQUEST) - 1):  # one TLS record per byte: nothing complete yet
        client.send(GRAMINE_REQUEST[byte : byte + 1])
        session.receive_data(drain(client))
        assert session.state is PreAuthState.REQUEST
        assert session.request is None
    client.send(GRAMINE_REQUEST[-1:])
    session.receive_data(drain(client))
    assert session.state is PreAuthState.READY
    assert session.request == SecretRequest(RequestKind.GRAMINE, ("default",))
    session.receive_data(b"later bytes are not read")  # ignored once ready
    assert session.state is PreAuthState.READY


def test_request_arriving_with_the_handshake(
    contexts: tuple[SSL.Context, list[x509.Certificate], SSL.Context],
) -> None:
    server_ctx, _, client_ctx = contexts
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    session = PreAuthSession(server_ctx)
    with pytest.raises(SSL.WantReadError):
        client.do_handshake()
    session.receive_data(drain(client))
    client.bio_write(session.data_to_send())
    client.do_handshake()
    client.send(EXT_REQUEST_MAGIC + b"\x00")  # the client's Finished and its request in one read
    session.receive_data(drain(client))
    assert session.state is PreAuthState.READY
    assert session.request == SecretRequest(RequestKind.EXTENSION, ())


@pytest.mark.parametrize(
    ("payload", "eof", "category", "detail"),
    [
        (b"SECRET_PROVISION_RA_TLS_REQUEST_V2\x00", False, "protocol", "not a secret-provisioning request"),
        (GRAMINE_REQUEST + b"x", False, "protocol", "unexpected bytes after the request"),
        (GRAMINE_REQUEST[:10], True, "protocol", "middle of the request"),
        (b"", True, "protocol", "without a request"),
    ],
)
def test_bad_requests_end_the_stage_with_a_failure(
    contexts: tuple[SSL.Context, list[x509.Certificate], SSL.Context],
    payload: bytes,
    eof: bool,
    category: str,
    detail: str,
) -> None:
    server_ctx, _, client_ctx = contexts
    client, session = handshake(client_ctx, server_ctx)
    if payload:
        client.send(payload)
        session.receive_data(drain(client))
    if eof:
        session.receive_data(b"")
    assert session.state is PreAuthState.READY
    assert isinstance(session.request, ReadFailure)
    assert session.request.category == category
    assert detail in session.request.detail


def test_too_many_bytes_before_the_request(
    contexts: tuple[SSL.Context, list[x509.Certificate], SSL.Context],
) -> None:
    server_ctx, _, client_ctx = contexts
    fresh = PreAuthSession(server_ctx)
    fresh.receive_data(b"\x16" * (MAX_PREAUTH_INPUT_BYTES + 1))
    assert fresh.state is PreAuthState.FAILED
    assert fresh.failure is not None
    assert fresh.failure[0] == "tls"
    assert f"more than {MAX_PREAUTH_INPUT_BYTES} bytes" in fresh.failure[1]
    client, session = handshake(client_ctx, server_ctx)
    client.send(EXT_REQUEST_MAGIC[:5])
    session.receive_data(drain(client))
    client.sendall(b"A" * MAX_PREAUTH_INPUT_BYTES)
    session.receive_data(drain(client))
    assert isinstance(session.request, ReadFailure)
    assert session.request.category == "protocol"
    assert "more than" in session.request.detail


def test_handshake_failures(contexts: tuple[SSL.Context, list[x509.Certificate], SSL.Context]) -> None:
    server_ctx, ca_certs, _ = contexts
    garbage = PreAuthSession(server_ctx)
    garbage.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert garbage.state is PreAuthState.FAILED
    assert garbage.failure is not None
    assert garbage.failure[0] == "tls"
    assert garbage.failure[1].startswith("TLS handshake failed: ")

    closed = PreAuthSession(server_ctx)
    closed.receive_data(b"")  # EOF before any byte
    assert closed.state is PreAuthState.FAILED
    assert closed.failure is not None
    assert closed.failure[0] == "timeout_or_closed"

    anonymous_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)  # presents no certificate
    store = anonymous_ctx.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(ca_certs[0]))
    client = SSL.Connection(anonymous_ctx, None)
    client.set_connect_state()
    session = PreAuthSession(server_ctx)
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        session.receive_data(drain(client))
        if session.state is not PreAuthState.HANDSHAKE:
            break
        client.bio_write(session.data_to_send())
    assert session.state is PreAuthState.FAILED
    assert session.failure is not None
    assert session.failure[0] == "tls"
    assert "certificate" in session.failure[1]


def test_deadlines(contexts: tuple[SSL.Context, list[x509.Certificate], SSL.Context]) -> None:
    server_ctx, _, client_ctx = contexts
    silent = PreAuthSession(server_ctx)
    silent.expire()
    assert silent.state is PreAuthState.FAILED
    assert silent.failure == (
        "timeout_or_closed",
        "TLS handshake did not complete: timed out waiting for the peer",
    )
    _, session = handshake(client_ctx, server_ctx)
    session.expire()
    assert session.state is PreAuthState.READY
    assert session.request == ReadFailure.timeout("timed out waiting for the peer")
    session.expire()  # nothing more to expire
    assert session.request == ReadFailure.timeout("timed out waiting for the peer")
