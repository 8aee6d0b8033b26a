"""The load balancer with a real nginx: passthrough of bytes, a dead backend skipped, graceful reload."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from confserve.cli import main
from confserve.cluster import NginxConfig, NginxError, NginxProcess, find_stream_module, render_nginx
from confserve.cluster._local import free_port


class EchoServer:
    """A TCP backend that answers every chunk with `name|chunk`, counting connections."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(self.name + b"|" + data)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); the port stops listening
        self.sock.close()


def ask(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        return s.recv(65536)


def wait_listening(port: int, proc: NginxProcess) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.running(), (proc.config.run_dir / "nginx-error.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("nginx did not start listening")


@pytest.fixture
def backends() -> Iterator[list[EchoServer]]:
    servers = [EchoServer("a"), EchoServer("b")]
    yield servers
    for s in servers:
        s.close()


def _config(tmp_path: Path, listen: int, backends: list[EchoServer]) -> NginxConfig:
    return NginxConfig(
        grpc_listen=f"127.0.0.1:{listen}",
        grpc_backends=[f"127.0.0.1:{b.port}" for b in backends],
        run_dir=tmp_path / "nginx",
        stream_module=find_stream_module(),
    )


def test_passthrough_balancing_and_dead_backend(tmp_path: Path, backends: list[EchoServer]) -> None:
    listen = free_port()
    proc = NginxProcess(_config(tmp_path, listen, backends))
    proc.start()
    try:
        wait_listening(listen, proc)
        payload = bytes(range(256)) * 16  # opaque bytes, as TLS records are
        answers = [ask(listen, payload) for _ in range(10)]
        assert all(a.split(b"|", 1)[1] == payload for a in answers)
        assert {a.split(b"|", 1)[0] for a in answers} == {b"a", b"b"}
        backends[0].close()  # a replica dies
        answers = [ask(listen) for _ in range(20)]  # every new connection still succeeds
        assert answers == [b"b|ping"] * 20
        assert (tmp_path / "nginx/nginx-access.log").read_text().count("upstream=") >= 30
    finally:
        proc.stop()
    assert not proc.running()


def test_reload_keeps_open_connections(tmp_path: Path, backends: list[EchoServer]) -> None:
    listen = free_port()
    proc = NginxProcess(_config(tmp_path, listen, backends[:1]))
    proc.start()
    try:
        wait_listening(listen, proc)
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as held:
            held.sendall(b"one")
            assert held.recv(100) == b"a|one"
            proc.reload(_config(tmp_path, listen, backends[1:]))  # scale: replace the backend set
            deadline = time.monotonic() + 10
            while ask(listen) != b"b|ping":  # new workers pick up the new upstreams
                assert time.monotonic() < deadline
                time.sleep(0.05)
            held.sendall(b"two")  # the old connection survived the reload
            assert held.recv(100) == b"a|two"
    finally:
        proc.stop()


def test_bad_configurations(tmp_path: Path) -> None:
    for bad in ("nohost", "1.2.3.4:0", "1.2.3.4:70000", "bad host:1", "x;y:1"):
        with pytest.raises(NginxError):
            render_nginx(NginxConfig(grpc_listen="127.0.0.1:1", grpc_backends=[bad], run_dir=tmp_path))
    with pytest.raises(NginxError, match="no backends"):
        render_nginx(NginxConfig(grpc_listen="127.0.0.1:1", grpc_backends=[], run_dir=tmp_path))
    with pytest.raises(NginxError, match="without a REST listen"):
        render_nginx(NginxConfig("127.0.0.1:1", ["127.0.0.1:2"], tmp_path, rest_backends=["127.0.0.1:3"]))
    config = NginxConfig("127.0.0.1:1", ["127.0.0.1:2"], tmp_path / "n", stream_module="/nonexistent/mod.so")
    with pytest.raises(NginxError, match="rejected"):
        NginxProcess(config).write()
    assert not (tmp_path / "n/nginx.conf").exists()
    text = render_nginx(NginxConfig("[::1]:8500", ["[::1]:9000"], tmp_path))
    assert "listen [::1]:8500;" in text
    assert "server [::1]:9000 max_fails=1" in text


def test_render_cli(tmp_path: Path) -> None:
    out = tmp_path / "nginx.conf"
    result = CliRunner().invoke(
        main,
        ["render", "nginx", "--backend", "127.0.0.1:9001", "--backend", "127.0.0.1:9002", "--rest-backend",
         "127.0.0.1:9101", "--rest-listen", "127.0.0.1:8501", "--run-dir", str(tmp_path), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.count("server 127.0.0.1:") == 3
    assert "proxy_next_upstream on;" in text
    assert "ssl" not in text  # passthrough: nginx never terminates TLS or holds a key
    result = CliRunner().invoke(main, ["render", "nginx", "--backend", "nope"])
    assert result.exit_code == 1
    assert "HOST:PORT" in result.output
