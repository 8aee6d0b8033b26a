"""Releases end to end, in-process: a simulated replica with a pinned release key leases per-model keys
and release floors from a real key service (RA-TLS, audit log) and serves over TLS.

- a floor raised at the key service (policy edited, reloaded) stops the withdrawn release within one
  lease, while another model keeps serving; a new release serves again;
- a key withdrawn from the policy stops the model that uses it, not the others;
- a key service the replica cannot reach: it stops serving when its lease ends, and serves again once
  it renews;
- key rotation under load (a new key id and a new release; the policy grants both keys, then the old one
  is retired): no request fails.

The lease is short (2 s) so the test runs in seconds; the waits below poll a condition with a deadline
and assert nothing about time itself (the schedule's bounds are tested with an injected clock in
tests/unit/replica/test_lease.py)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from confserve import owner, pf
from confserve.attestation import (
    AllowRule,
    Collateral,
    Policy,
    SimPlatform,
    StaticCollateralSource,
    TrustConfig,
    generate_signing_key,
)
from confserve.client import ClientTls, PredictClient
from confserve.frontends import ModelServer
from confserve.owner import generate_tls_material
from confserve.provisioning import SecretProvisioningServer, SecretStore, ServerLimits, ServerSettings
from confserve.releases import ReleaseKey
from confserve.replica import ServeOptions, build, identity
from confserve.serving import KeyGrant, ModelUnavailableError, ReleasedOpener, State
from tests.background_load import BackgroundLoad
from tests.unit.serving.models import copy_model, expected_probabilities

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
LEASE_SECONDS = 2.0
WAIT_SECONDS = 60.0  # a safety net only: a broken test fails here instead of hanging


@dataclass
class Env:
    root: Path
    host: Path
    release_key: ReleaseKey
    keys: dict[str, pf.WrapKey]
    prov_chain: tuple[x509.Certificate, ...]
    prov_key: object
    options: ServeOptions


def encrypt_model(env: Env, name: str, key_id: str) -> None:
    plain = copy_model(env.root / "plain" / name, (1,))
    owner.encrypt_model_tree(plain, env.host / "models" / name, env.keys[key_id], bind_root=f"models/{name}")
    owner.publish_release(
        env.host / "models" / name, model=name, bind_root=f"models/{name}", key=env.release_key, key_id=key_id
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    host = tmp_path / "host"
    host.mkdir()
    SimPlatform.init(tmp_path / "sim", now=int(time.time()))
    signer = generate_signing_key()
    (tmp_path / "signer.pem").write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    keys = {name: pf.WrapKey.generate() for name in ("default", "clf", "clf-2", "other")}
    release_key = ReleaseKey.generate()
    (host / "release.pub.pem").write_bytes(release_key.public_pem())
    generate_tls_material(tmp_path / "tls", "localhost", "client.local", wrap_key=keys["default"])
    shutil.copyfile(tmp_path / "tls" / "server" / "ssl.cfg", host / "ssl.cfg")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(host / "prov-ca.crt"))
    issued = ca.issue_cert("localhost")
    chain = tuple(x509.load_pem_x509_certificates(b"".join(b.bytes() for b in issued.cert_chain_pems)))
    prov_key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    (host / "models.config").write_text(
        'model_config_list { config { name: "clf" base_path: "models/clf" } '
        'config { name: "other" base_path: "models/other" } }'
    )
    options = ServeOptions(
        model_config_file="models.config",
        ssl_config_file="ssl.cfg",
        secret_provision_servers="localhost:1",  # replaced once the key service listens
        secret_provision_ca_chain_path="prov-ca.crt",
        sim_platform=str(tmp_path / "sim"),
        signing_key=str(tmp_path / "signer.pem"),
        release_public_key="release.pub.pem",
        secret_provision_lease_seconds=LEASE_SECONDS,
        secret_provision_deadline_seconds=20,
        file_system_poll_wait_seconds=0.2,
        host="127.0.0.1",
        port=0,
        no_rest=True,
    )
    environment = Env(tmp_path, host, release_key, keys, chain, prov_key, options)
    encrypt_model(environment, "clf", "clf")
    encrypt_model(environment, "other", "other")
    old = os.getcwd()
    os.chdir(host)  # the replica runs in the host directory: its bound paths are relative
    try:
        yield environment
    finally:
        os.chdir(old)


@dataclass
class KeyService:
    env: Env
    policies: list[Policy] = field(default_factory=list)
    server: SecretProvisioningServer | None = None
    port: int = 0

    def start(self) -> None:
        platform = SimPlatform.load(self.env.root / "sim")
        self.server = SecretProvisioningServer(
            ServerSettings(
                certificate_chain=self.env.prov_chain,
                private_key=self.env.prov_key,  # type: ignore[arg-type]
                policy=lambda: self.policies[-1],
                secrets=lambda: SecretStore({n: k.raw() for n, k in self.env.keys.items()}),
                collateral=lambda: StaticCollateralSource(Collateral.from_json(platform.collateral_json)),
                trust=TrustConfig.simulated(platform.root_ca_der),
                listen_port=self.port,
                audit_log=self.env.root / "audit.log",
                limits=ServerLimits(rate_limit_per_second=0),
            )
        )
        self.server.start()
        self.port = self.server.address[1]

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()
        self.server = None

    def set(self, secrets: tuple[str, ...], **floors: int) -> None:
        mr_enclave = identity(self.env.options.replace(secret_provision_servers=f"localhost:{self.port}"))[0]
        rule = AllowRule(name="replica", mr_enclave=mr_enclave.mr_enclave, secrets=secrets)
        self.policies.append(Policy(rules=(rule,), allow_simulated=True, floors=floors))
        if self.server is not None:
            assert self.server.reload()


@pytest.fixture
def service(env: Env) -> Iterator[KeyService]:
    keys = KeyService(env)
    keys.policies.append(Policy(allow_simulated=True))
    keys.start()
    yield keys
    if keys.server is not None:
        keys.stop()


@dataclass
class Replica:
    server: ModelServer
    stop_event: threading.Event

    @property
    def opener(self) -> ReleasedOpener:
        opener = self.server.store.opener
        assert isinstance(opener, ReleasedOpener)
        return opener

    def grant(self) -> KeyGrant:
        return self.opener.keys.current()

    def status(self, model: str) -> dict[int, tuple[State, str | None]]:
        return {s.version: (s.state, s.error) for s in self.server.store.manager.model_status(model)}

    def predict(self, model: str) -> int:
        with self.server.store.manager.acquire(model) as handle:
            out = handle.servable.run("serving_default", {"x": X}, ["probabilities"])
            np.testing.assert_allclose(out["probabilities"], expected_probabilities(X), rtol=1e-5)
            return handle.version


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.fixture
def replica(env: Env, service: KeyService) -> Iterator[Replica]:
    service.set(("default", "clf", "clf-2", "other"), clf=0)
    stop = threading.Event()
    server = build(env.options.replace(secret_provision_servers=f"localhost:{service.port}"), stop)
    assert server is not None
    try:
        yield Replica(server, stop)
    finally:
        stop.set()
        server.stop(0)


def test_per_model_keys_and_floors_come_from_the_key_service(replica: Replica) -> None:
    assert replica.predict("clf") == 1
    assert replica.predict("other") == 1
    grant = replica.grant()
    assert sorted(grant.keys) == ["clf", "default", "other"]  # asked for what the releases name only
    assert dict(grant.floors) == {"clf": 0, "other": 0}


def test_a_raised_floor_stops_the_withdrawn_release_within_one_lease(
    env: Env, service: KeyService, replica: Replica
) -> None:
    assert replica.predict("clf") == 1
    before = replica.grant()
    assert before.expires_at is not None
    service.set(("default", "clf", "other"), clf=1)  # the owner withdraws release 0 of clf
    wait_until(lambda: replica.status("clf")[1][0] is State.END, "release 0 of clf is unloaded")
    assert replica.status("clf")[1][1] == "release 0 of model 'clf' is below its floor 1 (withdrawn)"
    after = replica.grant()
    assert after.floors["clf"] == 1
    assert after.expires_at is not None
    # The renewal that carried the new floor started before the previous grant ran out: one lease.
    assert after.expires_at - LEASE_SECONDS < before.expires_at
    assert replica.predict("other") == 1  # the other model kept serving
    # The owner publishes release 1: served again.
    owner.publish_release(env.host / "models/clf", model="clf", bind_root="models/clf", key=env.release_key)
    wait_until(lambda: replica.status("clf").get(1, (None,))[0] is State.AVAILABLE, "release 1 serves")
    assert replica.predict("clf") == 1


def test_a_withdrawn_key_stops_only_its_model(service: KeyService, replica: Replica) -> None:
    service.set(("default", "other"))
    wait_until(lambda: replica.status("clf")[1][0] is State.END, "clf is unloaded")
    assert replica.status("clf")[1][1] == "key 'clf' of release 0 is not granted"
    assert replica.predict("other") == 1
    service.set(("default", "clf", "other"))
    wait_until(lambda: replica.status("clf")[1][0] is State.AVAILABLE, "clf serves again")


def test_a_replica_that_cannot_renew_stops_serving_when_its_lease_ends(
    service: KeyService, replica: Replica
) -> None:
    assert replica.predict("clf") == 1
    service.stop()
    wait_until(lambda: replica.status("other")[1][0] is State.END, "nothing is served")
    assert replica.status("clf")[1] == (State.END, "the key lease expired: this replica could not renew it")
    with pytest.raises(ModelUnavailableError, match="No version of model clf is available"):
        replica.predict("clf")
    service.start()  # the same port: the replica renews and serves again
    wait_until(
        lambda: all(replica.status(m)[1][0] is State.AVAILABLE for m in ("clf", "other")), "both serve again"
    )
    assert replica.predict("other") == 1


def clf_load(env: Env, port: int) -> BackgroundLoad:
    """Requests on new TLS connections to the replica's gRPC port, each answer checked; a failed attempt
    is lost at once (no retry: rotation must fail no request)."""
    tls = ClientTls.from_bundle(env.root / "tls" / "client", server_name="localhost")
    target = f"127.0.0.1:{port}"

    def once() -> None:
        with PredictClient(target, tls=tls, timeout_seconds=20) as client:
            out = client.predict("clf", {"x": X}, outputs=("probabilities",))
        np.testing.assert_allclose(out["probabilities"], expected_probabilities(X), rtol=1e-5)

    return BackgroundLoad(once, retry_pause=None, bound_seconds=300)


def test_key_rotation_under_load_fails_no_request(env: Env, service: KeyService, replica: Replica) -> None:
    assert replica.predict("clf") == 1
    with clf_load(env, replica.server.grpc.port) as load:
        load.wait_for(5)
        # The policy already grants clf and clf-2 (rotation step 1). Rotate: version 2 under clf-2.
        release, renumbered = owner.rotate_key(
            env.host / "models/clf",
            model="clf",
            bind_root="models/clf",
            key=env.release_key,
            old_key=env.keys["clf"],
            new_key=env.keys["clf-2"],
            new_key_id="clf-2",
        )
        assert (release.release, renumbered) == (1, {1: 2})
        wait_until(lambda: replica.status("clf").get(1, (None,))[0] is State.END, "version 1 is unloaded")
        assert replica.status("clf")[2] == (State.AVAILABLE, None)
        load.wait_for(5)
        # Retire the old key (and withdraw release 0): the replica no longer asks for it.
        service.set(("default", "clf-2", "other"), clf=1)
        wait_until(lambda: replica.grant().floors.get("clf") == 1, "the new policy reached the replica")
        assert "clf" not in replica.grant().keys
        load.wait_for(5)
    assert load.errors == []
    assert replica.predict("clf") == 2
