"""`confserve render nginx` keeps working beside the Gramine and Kubernetes renderers."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from confserve.cli import main


def test_render_nginx_to_stdout_and_file(tmp_path: Path) -> None:
    args = [
        "render",
        "nginx",
        "--backend",
        "127.0.0.1:9000",
        "--backend",
        "127.0.0.1:9001",
        "--rest-backend",
        "127.0.0.1:9100",
        "--rest-listen",
        "127.0.0.1:8501",
        "--run-dir",
        str(tmp_path),
        "--stream-module",
        "none",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "server 127.0.0.1:9001" in result.output
    assert "load_module" not in result.output
    out = tmp_path / "nginx.conf"
    result = CliRunner().invoke(
        main, [*args[:-2], "--stream-module", "/x/ngx_stream_module.so", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# Rendered by confserve")
    assert "load_module /x/ngx_stream_module.so;" in out.read_text()


def test_render_nginx_refuses_a_bad_backend() -> None:
    result = CliRunner().invoke(main, ["render", "nginx", "--backend", "nowhere", "--stream-module", "none"])
    assert result.exit_code == 1
    assert "is not HOST:PORT" in result.output


def test_rest_listen_defaults_and_the_file_says_how_to_run_it(tmp_path: Path) -> None:
    out = tmp_path / "lb.conf"
    result = CliRunner().invoke(
        main,
        ["render", "nginx", "--backend", "10.0.0.1:8500", "--rest-backend", "10.0.0.1:8501",
         "--listen", "0.0.0.0:8500", "--run-dir", str(tmp_path), "--stream-module", "none", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "listen 0.0.0.0:8501;" in text  # REST forwarded too, on TF Serving's REST port
    assert "server 10.0.0.1:8501" in text
    assert f"# Run it with: nginx -p {tmp_path.resolve()} -c THIS_FILE" in text
    assert f"run it with: nginx -p {tmp_path.resolve()} -c {out.resolve()}" in result.stderr
