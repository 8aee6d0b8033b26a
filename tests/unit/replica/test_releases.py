"""A replica with `release_public_key`: the key is measured by content, and the replica serves only what
a valid release lists (a real SavedModel, in-process, development key)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from confserve import pf
from confserve.releases import MANIFEST_FILE, ReleaseKey, manifest_for_tree, sign_release
from confserve.replica import OptionsError, ServeOptions, build, measured_args
from confserve.serving import State
from tests.unit.serving.models import copy_model, expected_probabilities


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def options(**changes: object) -> ServeOptions:
    base = ServeOptions(
        model_name="clf",
        model_base_path="models/clf",
        insecure=True,
        wrap_key="wrap_key",
        release_public_key="release.pub.pem",
        host="127.0.0.1",
        port=0,
        no_rest=True,
        file_system_poll_wait_seconds=-1,
        secret_provision_ca_chain_path="ca.crt",
    )
    return base.replace(**changes)


def test_the_release_key_is_measured_by_content(host: Path) -> None:
    (host / "ca.crt").write_text("ca")
    (host / "release.pub.pem").write_bytes(ReleaseKey.generate().public_pem())
    with_key = measured_args(options())
    assert with_key["release_public_key"].startswith("sha256:")
    (host / "release.pub.pem").write_bytes(ReleaseKey.generate().public_pem())
    assert measured_args(options()) != with_key  # the host cannot swap the owner's key
    assert "release_public_key" not in measured_args(options(release_public_key=None))
    # The lease is availability: not measured.
    assert measured_args(options(secret_provision_lease_seconds=60)) == measured_args(options())


def test_gramine_mounts_hide_the_ciphertext_a_release_checks() -> None:
    with pytest.raises(OptionsError, match="encrypted mounts"):
        options(secret_provision_servers="a:1", secret_provision_set_key="default", wrap_key=None).validate()


def test_a_replica_serves_only_a_valid_release(host: Path) -> None:
    key, release_key = pf.WrapKey.generate(), ReleaseKey.generate()
    key.save(host / "wrap_key")
    (host / "release.pub.pem").write_bytes(release_key.public_pem())
    plain = copy_model(host / "plain" / "clf", (1,))
    pf.encrypt_tree(plain / "1", host / "models/clf/1", key, bind_root="models/clf/1")
    base = host / "models/clf"
    versions = manifest_for_tree(base, "models/clf")
    (base / MANIFEST_FILE).write_bytes(sign_release(release_key, model="clf", release=1, key_id="default",
                                                    versions=versions))  # fmt: skip
    server = build(options(), threading.Event())
    assert server is not None
    try:
        x = np.ones((1, 4), np.float32)
        with server.store.manager.acquire("clf") as handle:
            out = handle.servable.run("serving_default", {"x": x}, ["probabilities"])
        np.testing.assert_allclose(out["probabilities"], expected_probabilities(x), rtol=1e-6)
        # A manifest re-signed by anyone else: refused, and the version unloaded with the reason.
        (base / MANIFEST_FILE).write_bytes(sign_release(ReleaseKey.generate(), model="clf", release=2,
                                                        key_id="default", versions=versions))  # fmt: skip
        server.store.poll_once()
        [status] = server.store.manager.model_status("clf")
        assert status.state is State.END
        assert status.error == "the release manifest is not signed by the owner's release key"
    finally:
        server.stop(0)


def test_a_model_without_a_release_is_not_served(host: Path) -> None:
    key = pf.WrapKey.generate()
    key.save(host / "wrap_key")
    (host / "release.pub.pem").write_bytes(ReleaseKey.generate().public_pem())
    plain = copy_model(host / "plain" / "clf", (1,))
    pf.encrypt_tree(plain / "1", host / "models/clf/1", key, bind_root="models/clf/1")
    server = build(options(), threading.Event())
    assert server is not None
    try:
        [status] = server.store.manager.model_status("clf")
        assert (status.state, status.error) == (State.END, "cannot read release.json (FileNotFoundError)")
    finally:
        server.stop(0)
