"""Client configuration (server list, Gramine env vars, key installation), secret files, rate limit,
host-name matching."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confserve.provisioning import (
    ClientSettings,
    ConfigError,
    DevAttestationKeys,
    ProvisioningError,
    RateLimiter,
    SecretStore,
    ServerAddress,
    TlsError,
    parse_secret_spec,
    parse_server_list,
    read_secret_file,
)
from confserve.provisioning._tls import check_hostname, load_certificate_chain, load_private_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:4433", [("localhost", 4433)]),
        ("a:1,b:2;c:3 d:4", [("a", 1), ("b", 2), ("c", 3), ("d", 4)]),
        ("a:1,,;  b:2", [("a", 1), ("b", 2)]),
        (":1,a:,b:2,c", [("b", 2)]),  # entries missing host or port are skipped, as in Gramine
        ("attestation.service.com:4433", [("attestation.service.com", 4433)]),
    ],
)
def test_parse_server_list(text: str, expected: list[tuple[str, int]]) -> None:
    assert parse_server_list(text) == tuple(ServerAddress(h, p) for h, p in expected)


@pytest.mark.parametrize("text", ["", " , ;", "a:0", "a:65536", "a:http", "a:-1"])
def test_parse_server_list_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_server_list(text)


def test_server_address_str() -> None:
    assert str(ServerAddress("h", 1)) == "h:1"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_from_environ_gramine_names(ca_file: Path) -> None:
    settings = ClientSettings.from_environ(
        {
            "SECRET_PROVISION_SERVERS": "a:1;b:2",
            "SECRET_PROVISION_CA_CHAIN_PATH": str(ca_file),
            "SECRET_PROVISION_SET_KEY": "model_key",
        },
        deadline_seconds=3.0,
    )
    assert settings.servers == (ServerAddress("a", 1), ServerAddress("b", 2))
    assert settings.set_key == "model_key"
    assert settings.deadline_seconds == 3.0
    assert len(settings.ca_certificates) == 1


def test_from_environ_defaults_and_pf_key_alias(ca_file: Path) -> None:
    settings = ClientSettings.from_environ(
        {"SECRET_PROVISION_CA_CHAIN_PATH": str(ca_file), "SECRET_PROVISION_SET_PF_KEY": "true"}
    )
    assert settings.servers == (ServerAddress("localhost", 4433),)
    assert settings.set_key == "default"
    plain = ClientSettings.from_environ({"SECRET_PROVISION_CA_CHAIN_PATH": str(ca_file)})
    assert plain.set_key is None


def test_from_environ_requires_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA_CHAIN_PATH"):
        ClientSettings.from_environ({})
    with pytest.raises(ConfigError, match="cannot read"):
        ClientSettings.from_environ({"SECRET_PROVISION_CA_CHAIN_PATH": str(tmp_path / "none")})
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="not a PEM or DER"):
        ClientSettings.from_environ({"SECRET_PROVISION_CA_CHAIN_PATH": str(bad)})
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match="larger"):
        ClientSettings.from_environ({"SECRET_PROVISION_CA_CHAIN_PATH": str(big)})


def test_der_ca_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    der = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER
    )
    path = tmp_path / "ca.der"
    path.write_bytes(der)
    assert len(load_certificate_chain(str(path))) == 1


def test_settings_validation(ca_file: Path) -> None:
    ca = tuple(load_certificate_chain(str(ca_file)))
    servers = (ServerAddress("a", 1),)
    with pytest.raises(ConfigError):
        ClientSettings(servers=(), ca_certificates=ca)
    with pytest.raises(ConfigError):
        ClientSettings(servers=servers, ca_certificates=())
    with pytest.raises(ConfigError):
        ClientSettings(servers=servers, ca_certificates=ca, deadline_seconds=0)
    with pytest.raises(ConfigError):
        ClientSettings(servers=servers, ca_certificates=ca, set_key="../x")


def test_dev_attestation_keys(tmp_path: Path) -> None:
    (tmp_path / "default").write_bytes(b"")
    keys = DevAttestationKeys(tmp_path)
    keys.install("default", b"k" * 16)
    assert (tmp_path / "default").read_bytes() == b"k" * 16
    with pytest.raises(ProvisioningError, match="cannot open key 'missing'"):
        keys.install("missing", b"k" * 16)  # Gramine: the key name must already exist
    (tmp_path / "dir").mkdir()
    with pytest.raises(ProvisioningError, match="cannot open"):
        keys.install("dir", b"k" * 16)


def test_dev_attestation_keys_write_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(ProvisioningError, match="cannot write"):
        DevAttestationKeys(Path("/dev")).install("full", b"k" * 16)


# -- secrets --------------------------------------------------------------------------------------


def _secret(tmp_path: Path, data: bytes, mode: int = 0o600, name: str = "s") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_read_secret_file(tmp_path: Path) -> None:
    assert read_secret_file(_secret(tmp_path, b"k" * 16)) == b"k" * 16
    assert read_secret_file(_secret(tmp_path, b"k", 0o400, "ro")) == b"k"


@pytest.mark.parametrize(
    ("data", "mode", "message"),
    [
        (b"k", 0o640, "group or others"),
        (b"k", 0o604, "group or others"),
        (b"", 0o600, "1..65536"),
        (b"x" * 65537, 0o600, "1..65536"),
    ],
)
def test_read_secret_file_rejects(tmp_path: Path, data: bytes, mode: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        read_secret_file(_secret(tmp_path, data, mode))
    assert "kkk" not in str(info.value)


def test_read_secret_file_rejects_symlink_dir_missing(tmp_path: Path) -> None:
    target = _secret(tmp_path, b"k")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="cannot open"):
        read_secret_file(link)
    with pytest.raises(ConfigError, match="cannot open"):
        read_secret_file(tmp_path / "missing")
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_secret_file(tmp_path / "d")


def test_secret_specs_and_store(tmp_path: Path) -> None:
    assert parse_secret_spec("default=/x/y") == ("default", Path("/x/y"))
    for bad in ("default", "=x", "a b=x", "x="):
        with pytest.raises(ConfigError):
            parse_secret_spec(bad)
    path = _secret(tmp_path, b"SECRETBYTES")
    store = SecretStore.from_files((("a", path), ("b", path)))
    assert store.names() == {"a", "b"}
    assert store.get("a") == b"SECRETBYTES"
    assert store.get("zz") is None
    assert "SECRETBYTES" not in repr(store)
    with pytest.raises(ConfigError, match="twice"):
        SecretStore.from_files((("a", path), ("a", path)))
    with pytest.raises(ConfigError, match="invalid secret name"):
        SecretStore({"a/b": b"x"})
    with pytest.raises(ConfigError, match=r"1\.\.65536"):
        SecretStore({"a": b""})


def test_rate_limiter() -> None:
    clock = [0.0]
    limiter = RateLimiter(2.0, 3, max_addresses=2, monotonic=lambda: clock[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    clock[0] = 0.5  # one token back for "a"
    assert limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("c")  # evicts the least recently seen address ("b")
    assert len(limiter._buckets) == 2
    assert RateLimiter(0, 1).allow("x")  # disabled
    with pytest.raises(ConfigError):
        RateLimiter(1, 0)


# -- host names --------------------------------------------------------------------------------------


def _cert(cn: str | None, dns: list[str] | None = None, ips: list[str] | None = None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(__import__("datetime").datetime(2020, 1, 1))
        .not_valid_after(__import__("datetime").datetime(2040, 1, 1))
    )
    if dns is not None or ips is not None:
        entries: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
        entries += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("cert_args", "host", "ok"),
    [
        (("x", ["localhost"], ["127.0.0.1"]), "localhost", True),
        (("x", ["localhost"], ["127.0.0.1"]), "127.0.0.1", True),
        (("x", ["localhost"], ["127.0.0.1"]), "LOCALHOST", True),
        (("x", ["localhost"], ["127.0.0.1"]), "127.0.0.2", False),
        (("localhost", ["other"], None), "localhost", False),  # SAN present: CN ignored
        (("attestation.service.com", None, None), "attestation.service.com", True),  # no SAN: CN
        (("attestation.service.com", None, None), "evil.com", False),
        ((None, ["*.service.com"], None), "a.service.com", True),
        ((None, ["*.service.com"], None), "a.b.service.com", False),
        ((None, ["*.com"], None), "service.com", False),
    ],
)
def test_check_hostname(
    cert_args: tuple[str | None, list[str] | None, list[str] | None], host: str, ok: bool
) -> None:
    cert = _cert(*cert_args)
    if ok:
        check_hostname(cert, host)
    else:
        with pytest.raises(TlsError, match="does not match"):
            check_hostname(cert, host)


def test_load_private_key_errors(tmp_path: Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_bytes(b"nope")
    with pytest.raises(ConfigError, match="unencrypted PEM"):
        load_private_key(str(bad))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = tmp_path / "ed.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="RSA or EC"):
        load_private_key(str(ed))
