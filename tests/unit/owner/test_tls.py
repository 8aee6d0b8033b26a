"""TLS material: chains verify for the right names only, bundles are split by holder, no private key
reaches the server bundle in the clear, and ssl.cfg is TF Serving's SSLConfig."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from confserve import pf
from confserve.cli import main
from confserve.owner import TlsMaterialError, generate_tls_material, key_service_pki
from confserve.tfs_config import SSLConfig, parse_text

SERVICE = "grpc.tf-serving.service.com"
CLIENT = "client.tf-serving.service.com"
KEY = pf.WrapKey(bytes(range(16)))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _store(root: Path) -> verification.Store:
    return verification.Store([_cert(root / "client/ca.crt")])


@pytest.fixture(scope="module")
def twoway(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls")
    generate_tls_material(root, SERVICE, CLIENT, wrap_key=KEY)
    return root


def test_server_chain_verifies_for_its_name_only(twoway: Path) -> None:
    server = _cert(twoway / "owner/server.crt")
    now = datetime.datetime.now(datetime.UTC)
    verifier = (
        verification.PolicyBuilder()
        .store(_store(twoway))
        .time(now)
        .build_server_verifier(x509.DNSName(SERVICE))
    )
    verifier.verify(server, [])
    other = (
        verification.PolicyBuilder()
        .store(_store(twoway))
        .time(now)
        .build_server_verifier(x509.DNSName("evil.example.com"))
    )
    with pytest.raises(verification.VerificationError):
        other.verify(server, [])
    assert server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [SERVICE]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_chain_verifies(twoway: Path) -> None:
    client = _cert(twoway / "client/client.crt")
    verifier = (
        verification.PolicyBuilder()
        .store(_store(twoway))
        .time(datetime.datetime.now(datetime.UTC))
        .build_client_verifier()
    )
    result = verifier.verify(client, [])
    assert x509.DNSName(CLIENT) in result.subjects
    assert (
        client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value[0]
        == ExtendedKeyUsageOID.CLIENT_AUTH
    )


def test_serials_distinct_keys_modern_validity_bounded(twoway: Path) -> None:
    certs = [_cert(twoway / p) for p in ("owner/ca.crt", "owner/server.crt", "owner/client.crt")]
    assert len({c.serial_number for c in certs}) == 3
    for cert in certs:
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
    server = certs[1]
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days <= 366
    assert certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # keyUsage, critical: the CA signs certificates and CRLs; EC leaves sign and agree on keys (ECDH).
    ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    ec_leaf_usage = x509.KeyUsage(True, False, False, False, True, False, False, False, False)
    for cert, usage in zip(certs, (ca_usage, ec_leaf_usage, ec_leaf_usage), strict=True):
        extension = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert extension.critical
        assert extension.value == usage


def test_bundles_are_split_by_holder(twoway: Path) -> None:
    assert sorted(p.name for p in (twoway / "client").iterdir()) == [
        "ca.crt",
        "client.crt",
        "client.key",
        "server_name",
    ]
    assert (twoway / "client" / "server_name").read_text() == SERVICE + "\n"
    assert sorted(p.name for p in (twoway / "server").iterdir()) == ["ssl.cfg"]
    for path in (twoway / "server").rglob("*"):
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data
        assert b"BEGIN" not in data
    for name in ("ca.key", "server.key", "client.key", "ssl.cfg"):
        assert stat.S_IMODE((twoway / "owner" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((twoway / "owner").stat().st_mode) == 0o700
    assert stat.S_IMODE((twoway / "client/client.key").stat().st_mode) == 0o600


def test_ssl_config_is_tf_servings_and_decrypts_in_the_enclave(twoway: Path) -> None:
    plain = (twoway / "owner/ssl.cfg").read_bytes()
    enclave_view = pf.read_protected(twoway / "server/ssl.cfg", KEY, bound_path="ssl.cfg")
    assert enclave_view == plain
    config = parse_text(SSLConfig, bytes(enclave_view), what="ssl.cfg")
    assert config.client_verify is True
    assert config.server_cert == (twoway / "owner/server.crt").read_text()
    assert config.server_key == (twoway / "owner/server.key").read_text()
    assert config.custom_ca == (twoway / "owner/ca.crt").read_text()


def test_oneway_rsa(tmp_path: Path) -> None:
    material = generate_tls_material(tmp_path, "10.0.0.7", key_type="rsa-3072", days=30)
    assert material.ssl_config_encrypted is None
    assert not (tmp_path / "server").exists()
    assert sorted(p.name for p in (tmp_path / "client").iterdir()) == ["ca.crt", "server_name"]
    config = parse_text(SSLConfig, (tmp_path / "owner/ssl.cfg").read_bytes(), what="ssl.cfg")
    assert config.client_verify is False
    assert config.custom_ca == ""
    server = _cert(tmp_path / "owner/server.crt")
    key = server.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 3072
    # an RSA leaf signs and enciphers keys (no key agreement)
    rsa_leaf_usage = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
    assert server.extensions.get_extension_for_class(x509.KeyUsage).value == rsa_leaf_usage
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"service_domain": ""}, "not a valid host name"),
        ({"service_domain": "a b"}, "not a valid host name"),
        ({"service_domain": "x", "client_domain": "bad/name"}, "not a valid host name"),
        ({"service_domain": "x", "days": 0}, "validity"),
        ({"service_domain": "x", "key_type": "dsa"}, "unknown key type"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: dict[str, object], message: str) -> None:
    with pytest.raises(TlsMaterialError, match=message):
        generate_tls_material(tmp_path, **args)  # type: ignore[arg-type]


def test_never_replaces_existing_material(twoway: Path) -> None:
    before = (twoway / "owner/ca.key").read_bytes()
    with pytest.raises(TlsMaterialError, match="already exists"):
        generate_tls_material(twoway, SERVICE)
    assert (twoway / "owner/ca.key").read_bytes() == before


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    KEY.save("wrap-key")
    runner = CliRunner()
    result = runner.invoke(
        main, ["tls", "twoway", SERVICE, CLIENT, "--encrypt-with", "wrap-key", "--out", "t"]
    )
    assert result.exit_code == 0, result.output
    assert "must open it as ssl.cfg" in result.output
    assert pf.read_protected("t/server/ssl.cfg", KEY, bound_path="ssl.cfg")
    result = runner.invoke(main, ["tls", "oneway", SERVICE, "--out", "o", "--bound-path", "conf/ssl.cfg"])
    assert result.exit_code == 0, result.output
    assert "server bundle not written" in result.output
    result = runner.invoke(main, ["tls", "oneway", SERVICE, "--out", "o"])
    assert result.exit_code == 1
    assert "already exists" in result.output
    result = runner.invoke(main, ["tls", "oneway", "bad name", "--out", "b"])
    assert result.exit_code == 1
    assert "not a valid host name" in result.output


def test_client_bundle_names_the_server(twoway: Path, tmp_path: Path) -> None:
    from confserve.client import ClientError, ClientTls

    assert ClientTls.from_bundle(twoway / "client").server_name == SERVICE
    assert (
        ClientTls.from_bundle(twoway / "client", server_name="other.example").server_name == "other.example"
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "ca.crt").write_bytes((twoway / "client" / "ca.crt").read_bytes())
    assert ClientTls.from_bundle(bundle).server_name is None  # older bundles: the target's host
    (bundle / "server_name").write_text("not a name!\n")
    with pytest.raises(ClientError, match="does not hold a DNS name"):
        ClientTls.from_bundle(bundle)


def test_key_service_pki_names_every_host_and_verifies() -> None:
    """`secret-prov init`'s material comes from the same builder: the server certificate verifies under
    its CA for every name given (DNS or IP address) and no other, for 825 days; the CA key is not kept."""
    now = datetime.datetime.now(datetime.UTC)
    ca_pem, cert_pem, key_pem = key_service_pki(("keys.example.com", "localhost", "127.0.0.1"), now)
    ca, cert = x509.load_pem_x509_certificate(ca_pem), x509.load_pem_x509_certificate(cert_pem)
    store = verification.Store([ca])
    for name in (
        x509.DNSName("keys.example.com"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verification.PolicyBuilder().store(store).time(now).build_server_verifier(name).verify(cert, [])
    with pytest.raises(verification.VerificationError):
        verification.PolicyBuilder().store(store).time(now).build_server_verifier(
            x509.DNSName("evil.example.com")
        ).verify(cert, [])
    assert 824 <= (cert.not_valid_after_utc - now).days <= 825
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key() == cert.public_key()
    assert b"PRIVATE KEY" not in ca_pem + cert_pem


@pytest.mark.parametrize("names", [(), ("bad name",), ("ok.example.com", "a/b")])
def test_key_service_pki_refuses_bad_names(names: tuple[str, ...]) -> None:
    with pytest.raises(TlsMaterialError):
        key_service_pki(names, datetime.datetime.now(datetime.UTC))
