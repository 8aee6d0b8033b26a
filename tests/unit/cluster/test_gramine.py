"""`confserve render gramine`: both manifest variants parse as TOML, fix their arguments, trust every code
file, and mount exactly the paths `confserve model encrypt` and `confserve tls --encrypt-with` bind to."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from confserve import pf
from confserve.cli import main
from confserve.cluster import VARIANTS, GramineConfig, GramineError, plan_enclave, render_gramine_manifest
from confserve.cluster._gramine import Variant, server_argv
from confserve.replica import OptionsError, ServeOptions, option_specs

RUNTIMEDIR = "{{ gramine.runtimedir() }}"


def config(variant: Variant = "confserve", **changes: Any) -> GramineConfig:
    base = GramineConfig(
        variant=variant, model_name="digits", model_bind_root="models/digits", model_bytes=1 << 20
    )
    return dataclasses.replace(base, **changes)


def manifest(cfg: GramineConfig) -> dict[str, Any]:
    return tomllib.loads(render_gramine_manifest(cfg))


def keys(value: object, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a parsed manifest, including keys of tables inside arrays."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{prefix}{k}"
            yield from keys(v, f"{prefix}{k}.")
    elif isinstance(value, list):
        for item in value:
            yield from keys(item, prefix)


def is_trusted(uri: str, trusted: list[str]) -> bool:
    return any(uri == t or (t.endswith("/") and uri.startswith(t)) or uri + "/" == t for t in trusted)


def encrypted_mounts(m: dict[str, Any]) -> list[dict[str, str]]:
    return [mount for mount in m["fs"]["mounts"] if mount.get("type") == "encrypted"]


# --------------------------------------------------------------------------------------------------
# What item 1 requires, for both variants


@pytest.mark.parametrize("variant", VARIANTS)
def test_production_enclave_with_dcap(variant: Variant) -> None:
    m = manifest(config(variant))
    assert m["sgx"]["debug"] is False
    assert m["sgx"]["remote_attestation"] == "dcap"
    assert m["loader"]["entrypoint"]["uri"] == "file:{{ gramine.libos }}"
    assert m["loader"]["log_level"] == "error"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_insecure_option_and_nothing_from_the_host(variant: Variant) -> None:
    m = manifest(config(variant))
    every = list(keys(m))
    assert not [k for k in every if "insecure__" in k]
    assert "use_cmdline_argv" not in str(every)
    assert "allowed_files" not in m["sgx"]  # no plaintext pass-through file at all
    assert "env_src_file" not in m["loader"]
    assert "argv_src_file" not in m["loader"]
    for name, value in m["loader"]["env"].items():
        assert isinstance(value, str), f"loader.env.{name} must be a fixed value, not a passthrough"


@pytest.mark.parametrize("variant", VARIANTS)
def test_argv_is_fixed_and_names_the_mounted_paths(variant: Variant) -> None:
    cfg = config(variant, model_bind_root="models/resnet50-v15-fp32", model_name="resnet50-v15-fp32")
    m = manifest(cfg)
    argv = m["loader"]["argv"]
    assert argv == server_argv(cfg)
    assert all(isinstance(a, str) for a in argv)
    assert "--model_base_path=/models/resnet50-v15-fp32" in argv
    assert "--model_name=resnet50-v15-fp32" in argv
    assert "--ssl_config_file=/ssl.cfg" in argv
    paths = {mount["path"] for mount in encrypted_mounts(m)}
    assert paths == {"/models/resnet50-v15-fp32", "/ssl.cfg"}
    assert posixpath.basename(m["libos"]["entrypoint"]) == argv[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_code_file_is_trusted(variant: Variant) -> None:
    m = manifest(config(variant))
    trusted = m["sgx"]["trusted_files"]
    assert all(isinstance(t, str) and t.startswith("file:") for t in trusted)
    assert is_trusted("file:" + m["libos"]["entrypoint"], trusted)
    assert "file:{{ gramine.libos }}" in trusted
    assert f"file:{RUNTIMEDIR}/" in trusted
    # Every host directory mounted as plain (chroot) files is trusted as a whole: no code comes in
    # unhashed. Only tmpfs (enclave memory) and the encrypted mounts are not.
    for mount in m["fs"]["mounts"]:
        kind = mount.get("type", "chroot")
        if kind == "chroot":
            assert is_trusted(mount["uri"], trusted) or any(
                t.startswith(mount["uri"] + "/") for t in trusted
            ), mount
        else:
            assert kind in ("tmpfs", "encrypted"), mount
    # The CA that authenticates the key server is a trusted file (otherwise the host picks the key).
    ca = (
        next(a.split("=", 1)[1] for a in m["loader"]["argv"] if "ca_chain_path=" in a)
        if variant == "confserve"
        else (m["loader"]["env"]["SECRET_PROVISION_CA_CHAIN_PATH"])
    )
    assert f"file:{ca}" in trusted


def test_confserve_variant_runs_confserve_serve_under_gramine_attestation() -> None:
    m = manifest(config("confserve"))
    argv = m["loader"]["argv"]
    assert m["libos"]["entrypoint"] == "/usr/local/bin/python3.11"
    assert argv[:6] == ["python3.11", "-I", "-B", "-c", "from confserve.cli import main; main()", "serve"]
    assert "--attestation=gramine" in argv
    assert "--secret_provision_servers=secret-prov.confserve.svc.cluster.local:4433" in argv
    assert "--rest_api_port=8501" in argv
    env = m["loader"]["env"]
    assert env["SECRET_PROVISION_SET_KEY"] == "default"
    assert "LD_PRELOAD" not in env  # confserve's own client, not Gramine's library
    assert "file:/usr/local/lib/" in m["sgx"]["trusted_files"]  # stdlib, site-packages (confserve, TF)


def test_confserve_serve_accepts_the_fixed_arguments() -> None:
    """Every flag of the measured argv is one `confserve serve` knows (else the enclave would stop)."""
    argv = server_argv(config("confserve"))
    assert argv[5] == "serve"
    result = CliRunner().invoke(main, [*argv[5:], "--help"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*argv[5:], "--no_such_flag", "--help"])
    assert result.exit_code == 2  # the check above can fail


def test_tf_serving_variant_uses_gramine_secret_prov_library() -> None:
    m = manifest(config("tf-serving", secret_prov_servers="keys.example.com:4433"))
    env = m["loader"]["env"]
    assert env["LD_PRELOAD"] == "libsecret_prov_attest.so"
    assert env["SECRET_PROVISION_CONSTRUCTOR"] == "1"
    assert env["SECRET_PROVISION_SET_KEY"] == "default"
    assert env["SECRET_PROVISION_SERVERS"] == "keys.example.com:4433"
    assert env["SECRET_PROVISION_CA_CHAIN_PATH"] == "/etc/confserve/secret-prov-ca.crt"
    argv = m["loader"]["argv"]
    assert m["libos"]["entrypoint"] == "/usr/bin/tensorflow_model_server"
    assert argv[0] == "tensorflow_model_server"
    assert "--rest_api_port=0" in argv  # TF Serving's REST has no TLS
    assert "--enable_batching=false" in argv
    # libsecret_prov_attest.so lives in Gramine's runtime directory, which /lib maps and which is trusted.
    assert {"path": "/lib", "uri": f"file:{RUNTIMEDIR}"} in m["fs"]["mounts"]
    assert env["LD_LIBRARY_PATH"].split(":")[0] == "/lib"


def test_batching_flag_follows_batch_threads() -> None:
    assert "--enable_batching=true" in server_argv(config("tf-serving", batch_threads=4))


@pytest.mark.parametrize("variant", VARIANTS)
def test_encrypted_mounts_use_the_key_the_service_releases(variant: Variant) -> None:
    mounts = encrypted_mounts(manifest(config(variant, key_name="model-key")))
    assert len(mounts) == 2
    assert {m["key_name"] for m in mounts} == {"model-key"}


# --------------------------------------------------------------------------------------------------
# Encrypted mounts == bound paths written by `confserve model encrypt` and `confserve tls --encrypt-with`


def host_path_for(mounts: list[dict[str, str]], enclave_path: str) -> str:
    """The host string Gramine binds a file opened at `enclave_path` to (docs/formats.md#pf-path)."""
    for mount in mounts:
        root = mount["path"]
        if enclave_path == root or enclave_path.startswith(root + "/"):
            uri = mount["uri"].removeprefix("file:")
            return pf.normalize_path(uri + enclave_path[len(root) :])
    raise AssertionError(f"{enclave_path} is in no encrypted mount")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("out", ["models/digits", "models/digits/", "/srv/models/digits"])
def test_mounts_equal_the_bound_paths(
    variant: Variant, out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    key = pf.WrapKey.generate()
    (tmp_path / "wrap_key").write_bytes(key.raw())
    os.chmod(tmp_path / "wrap_key", 0o600)
    plain = tmp_path / "plain"
    for rel, data in {
        "1/saved_model.pb": b"graph",
        "1/variables/variables.index": b"index",
        "1/variables/variables.data-00000-of-00001": b"data" * 1000,
        "1/assets/vocab.txt": b"a\nb\n",
        "2/saved_model.pb": b"graph2",
    }.items():
        (plain / rel).parent.mkdir(parents=True, exist_ok=True)
        (plain / rel).write_bytes(data)
    if out.startswith("/"):
        # An absolute bind root: encrypt into a directory here, bound to the absolute path.
        args = ["model", "encrypt", "-w", "wrap_key", "--out", "enc", "--bind-root", out, str(plain)]
        tree = tmp_path / "enc"
    else:
        args = ["model", "encrypt", "-w", "wrap_key", "--out", out, str(plain)]
        tree = tmp_path / out
    runner = CliRunner()
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main, ["tls", "oneway", "grpc.tf-serving.service.com", "--out", "tls", "--encrypt-with", "wrap_key"]
    )
    assert result.exit_code == 0, result.output

    m = manifest(config(variant, model_bind_root=out))
    mounts = encrypted_mounts(m)
    model_mount = next(x for x in mounts if x["path"] != "/ssl.cfg")
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    assert len(files) == 5
    for path in files:
        enclave_path = model_mount["path"] + "/" + path.relative_to(tree).as_posix()
        expected = host_path_for(mounts, enclave_path)
        with path.open("rb") as f, pf.ProtectedFileReader(f, key, bound_path=None) as reader:
            assert reader.stored_path == expected
        pf.read_protected(path, key, bound_path=expected)  # and it opens under that binding
    # The model argument names the mount, so the server opens exactly these paths.
    assert f"--model_base_path={model_mount['path']}" in m["loader"]["argv"]

    ssl_cfg = tmp_path / "tls" / "server" / "ssl.cfg"
    with ssl_cfg.open("rb") as f, pf.ProtectedFileReader(f, key, bound_path=None) as reader:
        assert reader.stored_path == host_path_for(mounts, "/ssl.cfg") == "ssl.cfg"
    assert b"server_key" in pf.read_protected(ssl_cfg, key, bound_path="ssl.cfg")


def test_a_wrong_bind_root_would_not_match(tmp_path: Path) -> None:
    """The check above can fail: a manifest for another root binds other strings."""
    key = pf.WrapKey.generate()
    data = pf.encrypt_bytes(b"x", key, bound_path="models/digits/1/saved_model.pb")
    mounts = encrypted_mounts(manifest(config(model_bind_root="models/other")))
    wrong = host_path_for(mounts, "/models/other/1/saved_model.pb")
    with pytest.raises(pf.PfError):
        pf.decrypt_bytes(data, key, bound_path=wrong)


# --------------------------------------------------------------------------------------------------
# Sizes


def parse_size(text: str) -> int:
    return int(text[:-1]) << {"M": 20, "G": 30}[text[-1]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_sizes_follow_model_and_threads(variant: Variant) -> None:
    small = manifest(config(variant, model_bytes=1 << 20))["sgx"]
    big = manifest(config(variant, model_bytes=3 << 30))["sgx"]
    size_small, size_big = parse_size(small["enclave_size"]), parse_size(big["enclave_size"])
    assert size_small & (size_small - 1) == 0
    assert size_big & (size_big - 1) == 0
    assert size_big > size_small
    assert size_big >= 3 * (3 << 30) // 2  # at least the copies of the model it holds while loading
    threads = manifest(config(variant, grpc_threads=64))["sgx"]["max_threads"]
    assert threads == small["max_threads"] + 48
    assert small["max_threads"] >= 4 + 16


def test_plan_reasoning_is_in_the_manifest() -> None:
    cfg = config(model_bytes=100 << 20)
    plan = plan_enclave(cfg)
    text = render_gramine_manifest(cfg)
    for reason in plan.reasons:
        assert f"#   {reason}" in text
    assert plan.enclave_size_bytes == 4 << 30  # 2048 + 3 x 100 + 44 x 2 + 256 MiB -> 4G
    assert plan.max_threads == 4 + 16 + 16 + 8 + 2 + 2


def test_edmm() -> None:
    m = manifest(config(edmm=True))
    assert m["sgx"]["edmm_enable"] is True
    assert "EDMM" in render_gramine_manifest(config(edmm=True))
    assert manifest(config())["sgx"]["edmm_enable"] is False


def test_identity_fields() -> None:
    m = manifest(config(isv_prod_id=7, isv_svn=3))
    assert (m["sgx"]["isvprodid"], m["sgx"]["isvsvn"]) == (7, 3)


# --------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    "changes",
    [
        {"model_bind_root": "../models/digits"},
        {"model_bind_root": "./models/digits"},
        {"model_bind_root": "models//digits"},
        {"model_bind_root": "models/./digits"},
        {"model_bind_root": ""},
        {"model_bind_root": "/"},
        {"model_bind_root": "models/di gits"},
        {"model_bind_root": 'models/"x'},
        {"ssl_config_bound_path": "../ssl.cfg"},
        {"model_name": "a/b"},
        {"model_name": ""},
        {"grpc_port": 0},
        {"rest_port": 70000},
        {"isv_prod_id": 65536},
        {"isv_svn": -1},
        {"model_bytes": -1},
        {"grpc_threads": 0},
        {"batch_threads": -1},
        {"secret_prov_servers": "keys.example.com"},
        {"secret_prov_servers": "a:1,b"},
        {"secret_prov_ca": "relative/ca.crt"},
        {"secret_prov_ca": "/etc/../ca.crt"},
        {"arch_libdir": "lib"},
        {"key_name": "../x"},
    ],
)
def test_bad_settings_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(GramineError):
        render_gramine_manifest(config(**changes))


def test_unknown_variant() -> None:
    with pytest.raises(GramineError, match="unknown variant"):
        render_gramine_manifest(config(variant="nginx"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_sizes_from_the_model_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/digits/1").mkdir(parents=True)
    (tmp_path / "models/digits/1/saved_model.pb").write_bytes(b"\0" * (3 << 20))
    result = CliRunner().invoke(
        main,
        [
            "render",
            "gramine",
            "--variant",
            "tf-serving",
            "--model-name",
            "digits",
            "--model-bind-root",
            "models/digits",
            "--out",
            "app.manifest.template",
        ],
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "app.manifest.template").read_text()
    assert "2 copies x 3 MiB" in text
    assert tomllib.loads(text)["libos"]["entrypoint"] == "/usr/bin/tensorflow_model_server"


@pytest.mark.parametrize(("size", "mib"), [("500M", 500), ("2G", 2048), (str(5 << 20), 5), ("7k", 1)])
def test_cli_model_size(size: str, mib: int) -> None:
    result = CliRunner().invoke(
        main,
        ["render", "gramine", "--model-name", "m", "--model-bind-root", "models/m", "--model-size", size],
    )
    assert result.exit_code == 0, result.output
    assert f"3 copies x {mib} MiB" in result.output
    tomllib.loads(result.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-size", "lots"], "is not a size"),
        (["--model-size", "5X"], "is not a size"),
        (["--model-size", "1M", "--model-dir", "."], "not both"),
        ([], "is not a directory"),
        (["--model-size", "1M", "--grpc-port", "0"], "out of range"),
    ],
)
def test_cli_errors(args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["render", "gramine", "--model-name", "m", "--model-bind-root", "models/m", *args]
    )
    assert result.exit_code != 0
    assert message in result.output


# --------------------------------------------------------------------------------------------------
# Releases (docs/releases.md): the owner's release public key, measured; ciphertext read by confserve

RELEASE_KEY = "/etc/confserve/release.pub.pem"


def serve_options(m: dict[str, Any]) -> ServeOptions:
    """What `confserve serve` builds from the manifest's argv and fixed environment (flag=value only)."""
    specs = {spec.name: spec for spec in option_specs()}
    fields: dict[str, Any] = {}
    for arg in m["loader"]["argv"][6:]:
        name, _, value = arg.removeprefix("--").partition("=")
        fields[name] = specs[name].kind(value) if value else True
    for name, spec in specs.items():
        if spec.envvar in m["loader"]["env"]:
            fields.setdefault(name, m["loader"]["env"][spec.envvar])
    return ServeOptions(**fields)


def test_release_key_is_a_measured_argument_and_a_trusted_file() -> None:
    m = manifest(config(release_public_key=RELEASE_KEY))
    argv = m["loader"]["argv"]
    assert f"--release_public_key={RELEASE_KEY}" in argv
    assert f"file:{RELEASE_KEY}" in m["sgx"]["trusted_files"]
    assert {"path": "/etc/confserve", "uri": "file:/etc/confserve"} in m["fs"]["mounts"]
    assert [mount["path"] for mount in m["fs"]["mounts"]].count("/etc/confserve") == 1  # shared with the CA
    # The replica the enclave runs accepts this command line and environment (it would stop otherwise).
    options = serve_options(m).validate()
    assert options.release_public_key == RELEASE_KEY
    assert options.secret_provision_set_key is None
    assert "--release_public_key" not in str(server_argv(config()))  # only when asked for


def test_release_key_elsewhere_gets_its_own_measured_mount() -> None:
    m = manifest(config(release_public_key="/opt/owner/release.pub.pem"))
    assert {"path": "/opt/owner", "uri": "file:/opt/owner"} in m["fs"]["mounts"]
    assert is_trusted("file:/opt/owner/release.pub.pem", m["sgx"]["trusted_files"])
    assert "file:/opt/owner/" not in m["sgx"]["trusted_files"]  # the one file, not the directory


def test_with_releases_the_replica_reads_ciphertext_itself() -> None:
    """Releases pin ciphertext hashes, which Gramine's encrypted mounts hide: none, and no Gramine key."""
    m = manifest(config(release_public_key=RELEASE_KEY))
    assert encrypted_mounts(m) == []
    assert "SECRET_PROVISION_SET_KEY" not in m["loader"]["env"]
    assert m["sgx"]["allowed_files"] == ["file:models/digits/", "file:ssl.cfg"]
    assert m["fs"]["start_dir"] == "/"
    plain = [
        mount for mount in m["fs"]["mounts"] if mount.get("uri") in ("file:models/digits", "file:ssl.cfg")
    ]
    assert plain == [
        {"path": "/models/digits", "uri": "file:models/digits"},
        {"path": "/ssl.cfg", "uri": "file:ssl.cfg"},
    ]
    # With the Gramine key in the environment the replica would refuse to start: the check can fail.
    env = {**m["loader"]["env"], "SECRET_PROVISION_SET_KEY": "default"}
    with pytest.raises(OptionsError, match="encrypted mounts"):
        serve_options({**m, "loader": {**m["loader"], "env": env}}).validate()


@pytest.mark.parametrize("root", ["models/digits", "/srv/models/digits"])
def test_with_releases_files_are_opened_at_their_bound_paths(root: str) -> None:
    """confserve binds a protected file to the path it opens it at (normalised): that must be the string
    `confserve model encrypt --out ROOT` bound it to, and it must resolve inside the plain mount."""
    m = manifest(
        config(release_public_key=RELEASE_KEY, model_bind_root=root, ssl_config_bound_path="tls/s.cfg")
    )
    options = serve_options(m)
    assert options.model_base_path is not None
    opened = posixpath.join(options.model_base_path, "1/saved_model.pb")
    assert pf.normalize_path(opened) == f"{root}/1/saved_model.pb"
    assert options.ssl_config_file == options.ssl_config_bound_path == "tls/s.cfg"
    resolved = posixpath.join(m["fs"]["start_dir"], opened)
    mount = next(x for x in m["fs"]["mounts"] if x.get("uri") == f"file:{root}")
    assert resolved.startswith(mount["path"] + "/")
    assert f"file:{root}/" in m["sgx"]["allowed_files"]


def test_tf_serving_has_no_release_check() -> None:
    with pytest.raises(GramineError, match="confserve variant"):
        render_gramine_manifest(config("tf-serving", release_public_key=RELEASE_KEY))


@pytest.mark.parametrize(
    "path", ["release.pub.pem", "/release.pub.pem", "/etc/../release.pub.pem", "/etc/a b"]
)
def test_bad_release_key_paths_are_refused(path: str) -> None:
    with pytest.raises(GramineError, match="release public key path"):
        render_gramine_manifest(config(release_public_key=path))


def test_release_options_that_make_no_serve_command_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A combination ServeOptions refuses surfaces as the renderer's own error, naming the flags."""

    def refuse(self: ServeOptions) -> ServeOptions:
        raise OptionsError("--release_public_key checks the files' ciphertext")

    monkeypatch.setattr(ServeOptions, "validate", refuse)
    with pytest.raises(GramineError, match="no valid confserve serve command: --release_public_key"):
        server_argv(config(release_public_key=RELEASE_KEY))


@pytest.mark.parametrize(
    ("variant", "exit_code", "expected"),
    [
        ("confserve", 0, f"--release_public_key={RELEASE_KEY}"),
        ("tf-serving", 1, "the release public key needs the confserve variant"),
    ],
)
def test_cli_release_public_key(variant: str, exit_code: int, expected: str) -> None:
    result = CliRunner().invoke(
        main,
        [
            "render",
            "gramine",
            "--variant",
            variant,
            "--model-name",
            "m",
            "--model-bind-root",
            "models/m",
            "--model-size",
            "1M",
            "--release-public-key",
            RELEASE_KEY,
        ],
    )
    assert result.exit_code == exit_code, result.output
    assert expected in result.output
