"""The top-level command group: its table of lazily imported commands, the `--help` listing drawn from
that table, and that light commands import no heavy module (a fresh interpreter per case)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from confserve import pf
from confserve.cli import main
from confserve.cli._main import COMMANDS, LazyCommand, LazyGroup, load_command

# Modules a light command must not import: the ML stack, RPC frameworks, and confserve's heavy layers.
HEAVY = (
    "numpy",
    "grpc",
    "tensorflow",
    "google.protobuf",
    "aiohttp",
    "dcap_qvl",
    "cryptography.x509",
    # the attestation package itself is light (its types and errors); its other modules are not
    *(
        f"confserve.attestation.{module}"
        for module in (
            "_attester",
            "_evidence",
            "_measure",
            "_policy",
            "_ratls",
            "_simplatform",
            "_trust",
            "_verify",
        )
    ),
    "confserve.provisioning",
    "confserve.client",
    "confserve.serving",
    "confserve.frontends",
    "confserve.owner",
)

# Runs the command line in a fresh interpreter, then reports which HEAVY modules got imported.
RUNNER = """
import json, sys
from confserve.cli import main
try:
    main(sys.argv[2:], prog_name="confserve")
except SystemExit:
    pass
sys.stdout.flush()
print("\\n" + json.dumps(sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)))
"""


def _fresh_group() -> LazyGroup:
    """The same table in a new group, so no command is loaded yet whatever earlier tests did."""
    return LazyGroup("confserve", lazy_commands=COMMANDS, context_settings=main.context_settings)


def _listing(group: click.Group) -> list[str]:
    result = CliRunner().invoke(group, ["--help"], prog_name="confserve")
    assert result.exit_code == 0, result.output
    lines = result.output.split("Commands:\n", 1)[1].splitlines()
    return [line for line in lines if line.strip()]


def test_help_lists_every_command_of_the_table() -> None:
    listed = [line.split()[0] for line in _listing(main)]
    assert listed == sorted(COMMANDS)
    assert {"pf", "predict", "serve", "up", "down", "status", "secret-prov", "attest"} <= set(listed)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_table_entry_resolves_to_its_command(name: str) -> None:
    command = load_command(COMMANDS[name])
    assert isinstance(command, click.Command)
    assert command.name == name
    # the listing shows the table's text; it must be what the command says of itself
    assert command.get_short_help_str(limit=10_000) == COMMANDS[name].short_help
    ctx = click.Context(main)
    assert main.get_command(ctx, name) is command


def test_listing_is_the_same_before_and_after_the_modules_load() -> None:
    group = _fresh_group()
    before = _listing(group)
    assert group.commands == {}  # showing the listing imported nothing
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        assert group.get_command(ctx, name) is not None
    assert set(group.commands) == set(COMMANDS)
    assert _listing(group) == before


def test_a_bad_table_entry_fails_loudly() -> None:
    with pytest.raises(AttributeError):
        load_command(LazyCommand("confserve.cli._pf:no_such_group", ""))
    with pytest.raises(ModuleNotFoundError):
        load_command(LazyCommand("confserve.cli._no_such_module:pf_group", ""))
    with pytest.raises(TypeError, match="not a click command"):
        load_command(LazyCommand("confserve.cli._pf:json", ""))


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_copies_of_library_constants_agree() -> None:
    """Option defaults and choices repeated in light modules so `--help` needs no heavy import."""
    from confserve.attestation import DEFAULT_ENTRY_POINT, RaTlsFormat
    from confserve.cli import _measure, _secret_prov, _tls
    from confserve.cluster import _k8s_common
    from confserve.owner import DEFAULT_SSL_CONFIG_BOUND_PATH
    from confserve.provisioning import DEFAULT_PORT

    listen = next(p for p in _secret_prov.serve_command.params if p.name == "listen")
    assert listen.default == f"0.0.0.0:{DEFAULT_PORT}"
    assert _k8s_common.SECRET_PROV_PORT == DEFAULT_PORT
    assert sorted(_secret_prov.RATLS_FORMATS) == sorted(fmt.value for fmt in RaTlsFormat)
    assert _measure.DEFAULT_ENTRY_POINT == DEFAULT_ENTRY_POINT
    assert _tls.DEFAULT_SSL_CONFIG_BOUND_PATH == DEFAULT_SSL_CONFIG_BOUND_PATH


def _imported_heavy(args: list[str], cwd: Path) -> tuple[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(HEAVY), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
        timeout=60,
    )
    output, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    return output, json.loads(last)


LIGHT = [
    ["--help"],
    ["pf", "--help"],
    ["pf", "decrypt", "--help"],
    ["tls", "--help"],
    ["tls", "oneway", "--help"],
    ["measure", "--help"],
    ["measure", "gen-signing-key", "--help"],
    ["sim-platform", "--help"],
    ["sim-platform", "init", "--help"],
    ["attest", "--help"],
    ["attest", "verify-quote", "--help"],
    ["secret-prov", "--help"],
    ["secret-prov", "request", "--help"],
    ["secret-prov", "audit-verify", "--help"],
    ["render", "--help"],
    ["status", "--help"],
    ["down", "--help"],
]


@pytest.mark.parametrize("args", LIGHT, ids=" ".join)
def test_light_command_help_imports_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    output, heavy = _imported_heavy(args, tmp_path)
    assert "Usage: confserve" in output
    assert heavy == []


def test_pf_commands_import_nothing_heavy(tmp_path: Path) -> None:
    key = pf.WrapKey.generate()
    key.save(tmp_path / "k")
    (tmp_path / "enc").write_bytes(pf.encrypt_bytes(b"x" * 10_000, key, bound_path="enc"))
    output, heavy = _imported_heavy(["pf", "info", "-i", "enc"], tmp_path)
    assert "format_version: 1" in output
    assert heavy == []
    output, heavy = _imported_heavy(["pf", "decrypt", "-w", "k", "-i", "enc", "-o", "out", "-V"], tmp_path)
    assert "10000 bytes" in output
    assert heavy == []
    assert (tmp_path / "out").read_bytes() == b"x" * 10_000


def test_the_runner_sees_heavy_imports(tmp_path: Path) -> None:
    """The check above can fail: a command that does import a heavy module is reported."""
    _, heavy = _imported_heavy(["model", "--help"], tmp_path)
    assert heavy != []
