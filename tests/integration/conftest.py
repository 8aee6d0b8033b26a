from __future__ import annotations

from typing import Any

import pytest
import trustme

from confserve.frontends import TlsConfig
from tests.unit.serving.models import make_dataplane


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_for(ca: trustme.CA, client_ca: trustme.CA | None = None) -> TlsConfig:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    return TlsConfig(
        cert_chain_pem=b"".join(blob.bytes() for blob in cert.cert_chain_pems),
        private_key_pem=cert.private_key_pem.bytes(),
        client_ca_pem=None if client_ca is None else client_ca.cert_pem.bytes(),
    )


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> TlsConfig:
    return tls_for(ca)


@pytest.fixture(scope="session")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_dataplane(tmp_path_factory.mktemp("served"))
