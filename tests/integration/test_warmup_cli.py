"""`confserve serve --enable_model_warmup` on an encrypted model whose warmup file the owner wrote."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from confserve.cli import main
from confserve.frontends import ModelServer, TlsConfig
from confserve.pf import WrapKey, encrypt_bytes, encrypt_tree
from confserve.serving import State
from tests.integration.test_serve_cli import ssl_cfg
from tests.unit.serving.models import model_tree
from tests.unit.serving.test_warmup import predict_log, write_warmup


@pytest.mark.parametrize(("warmup", "state"), [(True, State.LOADING), (False, State.AVAILABLE)])
def test_serve_warms_up_encrypted_models(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    server_tls: TlsConfig,
    warmup: bool,
    state: State,
) -> None:
    from confserve.cli import _serve

    monkeypatch.setattr(_serve, "install_stop_handlers", lambda stop, serving: None)
    monkeypatch.chdir(tmp_path)
    key = WrapKey.generate()
    key.save(tmp_path / "wrap-key")
    for name, alias in (("good", "x"), ("bad", "z")):
        shutil.copytree(model_tree() / "clf" / "1", tmp_path / "plain" / name / "1")
        write_warmup(tmp_path / "plain" / name / "1", [predict_log(alias)])
        encrypt_tree(tmp_path / "plain" / name / "1", f"models/{name}/1", key, bind_root=f"models/{name}/1")
    Path("ssl.cfg").write_bytes(encrypt_bytes(ssl_cfg(server_tls), key, bound_path="ssl.cfg"))
    Path("models.config").write_text(
        'model_config_list { config { name: "good" base_path: "models/good" } '
        'config { name: "bad" base_path: "models/bad" } }'
    )
    statuses: dict[str, Any] = {}

    def inspect(self: ModelServer) -> None:
        for name in ("good", "bad"):
            statuses[name] = self.store.manager.model_status(name)[0]

    monkeypatch.setattr(ModelServer, "stop", lambda self, grace_seconds=None: inspect(self))
    monkeypatch.setattr(_serve, "wait_for_stop", lambda stop: None)
    args = [
        "serve",
        "--host=127.0.0.1",
        "--model_config_file=models.config",
        "--port=0",
        "--no_rest",
        "--ssl_config_file=ssl.cfg",
        "--wrap_key=wrap-key",
        "--file_system_poll_wait_seconds=-1",
    ]
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(main, [*args, "--enable_model_warmup"] if warmup else args)
    assert result.exit_code == 0, result.output
    assert statuses["good"].state is State.AVAILABLE
    # Only warmup finds the bad record; the version is never served (LOADING: a retry is due later).
    assert statuses["bad"].state is state
    assert ("model good version 1: warmed up with 1 record(s)" in caplog.text) is warmup
    if warmup:
        assert "model warmup failed: input tensor alias not found" in statuses["bad"].error
