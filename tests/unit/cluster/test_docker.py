"""deploy/docker: the Dockerfiles parse (a small strict parser; no engine needed), every file they copy
exists in the repository and survives .dockerignore, bases are pinned (the base-image argument's default
too), Python packages come only from the wheelhouse, the images run as non-root, and what they hand to
Gramine and Kubernetes matches the renderers. tests/containers/ builds and runs them on a real engine."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from confserve.cli._render import render_gramine_cmd
from confserve.cluster import _k8s_common, _k8s_server

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "deploy" / "docker"
INSTRUCTIONS = frozenset(
    {
        *("FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT"),
        *("VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"),
    }
)
FLAGS = {"FROM": {"platform"}, "COPY": {"from", "chown", "chmod", "link"}, "RUN": {"mount", "network"}}


class DockerfileError(ValueError):
    pass


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    flags: dict[str, str]
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their flags; continuation lines joined, comments dropped. Strict: unknown or
    lower-case instructions, unknown flags, heredocs and a dangling continuation are errors."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are allowed (and dropped)
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        out.append(_instruction(start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        raise DockerfileError(f"line {start}: continuation runs past the end of the file")
    return out


def _instruction(line: int, text: str) -> Instruction:
    name, _, rest = text.partition(" ")
    if name not in INSTRUCTIONS:
        raise DockerfileError(f"line {line}: unknown instruction {name!r}")
    if "<<" in rest and name in ("RUN", "COPY"):
        raise DockerfileError(f"line {line}: heredocs are not used here")
    flags: dict[str, str] = {}
    while rest.startswith("--") and name in FLAGS:
        flag, _, rest = rest.partition(" ")
        key, eq, value = flag[2:].partition("=")
        if not eq or key not in FLAGS[name]:
            raise DockerfileError(f"line {line}: unknown flag {flag!r} for {name}")
        flags[key] = value
        rest = rest.lstrip()
    if not rest:
        raise DockerfileError(f"line {line}: {name} without arguments")
    if name in ("ENTRYPOINT", "CMD") and rest.startswith("["):
        value = json.loads(rest)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"line {line}: {name} JSON form must be a list of strings")
    return Instruction(line, name, flags, rest)


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def parsed(name: str) -> list[Instruction]:
    return parse_dockerfile((DOCKER / name).read_text())


def dockerignore_includes(rel: str) -> bool:
    """Whether `rel` is in the build context: last matching .dockerignore rule wins."""
    included = True
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            included = negate
    return included


# --------------------------------------------------------------------------------------------------


def test_the_images_exist() -> None:
    names = {p.name for p in dockerfiles()}
    assert {
        "server.Dockerfile",
        "server-sgx.Dockerfile",
        "tf-serving-sgx.Dockerfile",
        "secret-prov.Dockerfile",
        "client.Dockerfile",
        "lb.Dockerfile",
    } <= names
    assert (REPO / ".dockerignore").is_file()


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_parses_and_copies_only_what_exists(path: Path) -> None:
    instructions = parse_dockerfile(path.read_text())
    assert instructions[0].name in ("FROM", "ARG")
    stages: set[str] = set()
    contexts = set(re.findall(r"--build-context (\w+)=", path.read_text()))
    first_from = next(i for i, ins in enumerate(instructions) if ins.name == "FROM")
    args = dict(ins.args.partition("=")[::2] for ins in instructions[:first_from] if ins.name == "ARG")
    for ins in instructions:
        if ins.name == "RUN" and "mount" in ins.flags and "from=" in ins.flags["mount"]:
            source = re.search(r"from=([\w-]+)", ins.flags["mount"])
            assert source is not None
            assert source.group(1) in stages | contexts, f"{path.name}:{ins.line}: unknown mount source"
        if ins.name == "FROM":
            image, *alias = ins.args.split()
            # FROM ${BASE_IMAGE}: the argument's default (declared before the first FROM) must be pinned.
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
            assert image in stages or re.fullmatch(
                r"[a-z0-9./-]+(:[0-9][\w.-]*|@sha256:[0-9a-f]{64})", image
            ), f"{path.name}:{ins.line}: base {image!r} is not pinned by exact version tag or digest"
            assert "latest" not in image
            if alias:
                assert alias[0].upper() == "AS"
                stages.add(alias[1])
        elif ins.name == "ADD":
            pytest.fail(f"{path.name}:{ins.line}: use COPY (ADD fetches URLs and unpacks archives)")
        elif ins.name == "COPY":
            *sources, _dest = shlex.split(ins.args)
            assert sources, f"{path.name}:{ins.line}: COPY needs a source and a destination"
            if "from" in ins.flags:
                assert ins.flags["from"] in stages | contexts, f"{path.name}:{ins.line}: unknown --from"
                continue
            for source in sources:
                assert not source.startswith(("/", "..")), source
                assert (REPO / source).exists(), f"{path.name}:{ins.line}: {source} does not exist"
                assert dockerignore_includes(source.rstrip("/")), f"{source} is excluded by .dockerignore"
                assert not re.search(r"(key|\.pem)$", source), f"{path.name}: never copy keys into an image"


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_runs_as_non_root(path: Path) -> None:
    instructions = parse_dockerfile(path.read_text())
    last_from = max(i for i, ins in enumerate(instructions) if ins.name == "FROM")
    users = [ins.args for ins in instructions[last_from:] if ins.name == "USER"]
    assert users, f"{path.name}: no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit()  # numeric, so Kubernetes can check runAsNonRoot
    entrypoint = [ins for ins in instructions[last_from:] if ins.name == "ENTRYPOINT"]
    assert entrypoint
    assert entrypoint[-1].args.startswith("[")


def test_enclave_signing_key_is_a_build_secret() -> None:
    for name in ("server-sgx.Dockerfile", "tf-serving-sgx.Dockerfile"):
        sign = [i for i in parsed(name) if i.name == "RUN" and "gramine-sgx-sign" in i.args]
        assert len(sign) == 1
        assert sign[0].flags["mount"].startswith("type=secret,id=enclave-key")
        assert "--key /run/secrets/enclave-key" in sign[0].args


def test_images_match_the_kubernetes_files() -> None:
    server = parsed("server.Dockerfile")
    sgx = parsed("server-sgx.Dockerfile")
    for instructions in (server, sgx):
        assert [i.args for i in instructions if i.name == "WORKDIR"][-1] == _k8s_common.WORKDIR
        assert [i.args for i in instructions if i.name == "USER"][
            -1
        ] == f"{_k8s_common.SERVER_UID}:{_k8s_common.SERVER_UID}"
    entrypoint = json.loads([i.args for i in sgx if i.name == "ENTRYPOINT"][-1])
    patch = _k8s_server.sgx_patch()
    command = patch["spec"]["template"]["spec"]["containers"][0]["command"]  # type: ignore[index]
    assert entrypoint == command
    secret_prov = parsed("secret-prov.Dockerfile")
    assert [i.args for i in secret_prov if i.name == "USER"][
        -1
    ] == f"{_k8s_common.SECRET_PROV_UID}:{_k8s_common.SECRET_PROV_UID}"


@pytest.mark.parametrize("name", ["server-sgx.Dockerfile", "tf-serving-sgx.Dockerfile"])
def test_manifest_is_rendered_with_real_options(name: str) -> None:
    (run,) = [i for i in parsed(name) if i.name == "RUN" and "confserve render gramine" in i.args]
    command = run.args[run.args.index("confserve render gramine") :].split("&&")[0]
    options = {tok.split("=")[0] for tok in shlex.split(command) if tok.startswith("--")}
    known = {opt for p in render_gramine_cmd.params if isinstance(p, click.Option) for opt in p.opts}
    assert options
    assert options <= known, options - known


def test_sgx_server_image_pins_the_owners_release_key() -> None:
    """The production image's manifest passes --release_public_key and measures the file it names: the
    key the build copies in from the owner's context (docs/releases.md)."""
    instructions = parsed("server-sgx.Dockerfile")
    (run,) = [i for i in instructions if i.name == "RUN" and "confserve render gramine" in i.args]
    tokens = shlex.split(run.args[run.args.index("confserve render gramine") :].split("&&")[0])
    path = tokens[tokens.index("--release-public-key") + 1]
    copies = [i.args.split() for i in instructions if i.name == "COPY" and i.flags.get("from") == "owner"]
    assert ["release.pub.pem", path] in copies
    assert "--release-public-key" not in next(
        i.args for i in parsed("tf-serving-sgx.Dockerfile") if "confserve render gramine" in i.args
    )  # TF Serving has no release check: the renderer refuses the option there


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split("==")[0].lower(): d.split("==")[1] for d in deps}


# Import names of the runtime dependencies the key-service image leaves out.
MODULES = {
    "tensorflow": "tensorflow",
    "tensorflow-serving-api": "tensorflow_serving",
    "grpcio": "grpc",
    "grpcio-health-checking": "grpc_health",
    "aiohttp": "aiohttp",
    "keras": "keras",
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "numpy": "numpy",
    "protobuf": "google.protobuf",
}


def _install_runs(name: str) -> list[Instruction]:
    return [i for i in parsed(name) if i.name == "RUN" and " install --no-index" in i.args]


def _installed(name: str) -> dict[str, str]:
    text = " ".join(run.args for run in _install_runs(name))
    return dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][\w.]*)", text))


@pytest.mark.parametrize("name", ["server.Dockerfile", "secret-prov.Dockerfile", "client.Dockerfile"])
def test_python_packages_come_only_from_the_wheelhouse(name: str) -> None:
    """An air-gapped build: every pip install reads the wheelhouse (a build context) and no index; the
    wheelhouse is bind-mounted for each such step, so no wheel lands in a layer; no pip is left behind;
    the dependencies' layer is rebuilt when the wheelhouse changes (its name is a build argument)."""
    instructions = parsed(name)
    runs = _install_runs(name)
    assert len(runs) == 2  # the dependencies, then confserve itself (--no-deps)
    for run in runs:
        assert run.flags["mount"] == "type=bind,from=wheels,target=/wheels"
        installs = run.args.count(" install ")
        assert run.args.count("--no-index --find-links /wheels") == installs
        assert "pip install" not in run.args.replace('/pip" install', "")  # only the wheelhouse's pip runs
        assert "--invalidation-mode unchecked-hash" in run.args  # reproducible bytecode
    assert "python3 -m venv --without-pip /opt/confserve" in runs[0].args
    assert runs[1].args.count("--no-deps .") == 1
    assert instructions.index(runs[0]) - 1 == next(
        i for i, ins in enumerate(instructions) if ins.name == "ARG" and ins.args == "WHEELHOUSE=unset"
    )
    assert [i for i in instructions if i.name == "COPY" and "wheels" in i.args] == []


def test_server_installs_the_dependencies_pyproject_pins() -> None:
    (deps, _) = _install_runs("server.Dockerfile")
    assert "-r /wheels/dependencies.txt" in deps.args
    script = (REPO / "scripts" / "make-wheelhouse").read_text()
    assert '["project"]["dependencies"]' in script
    assert 'printf \'%s\\n\' "$dependencies" > "$work/wheels/dependencies.txt"' in script


def test_client_image_keeps_only_tensorflows_proto_modules() -> None:
    (deps, _) = _install_runs("client.Dockerfile")
    assert "--no-deps tensorflow==2.21.0 tensorflow-serving-api==2.21.0 &&" in deps.args
    assert '-type f ! -name "*_pb2.py" ! -name "__init__.py" -delete' in deps.args


@pytest.mark.parametrize("name", ["secret-prov.Dockerfile", "client.Dockerfile"])
def test_subset_images_pin_what_pyproject_pins(name: str) -> None:
    installed = _installed(name)
    pins = _pins()
    assert len(installed) >= 8
    for package, version in installed.items():
        assert pins.get(package.lower()) == version, f"{package}=={version} differs from pyproject.toml"


def test_secret_prov_image_installs_a_pinned_subset_that_suffices() -> None:
    installed = _installed("secret-prov.Dockerfile")
    left_out = [m for p, m in MODULES.items() if p not in {k.lower() for k in installed}]
    assert "tensorflow" in left_out
    # With every left-out package unimportable, the key service's commands still load.
    code = (
        "import sys\n"
        f"for m in {left_out!r}: sys.modules[m] = None\n"
        "from confserve.cli import main\n"
        "sys.argv = ['confserve', 'secret-prov', 'serve', '--help']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--policy" in done.stdout


# --------------------------------------------------------------------------------------------------
# The parser itself refuses what it does not understand


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a:1\nrun echo\n", "unknown instruction"),
        ("FROM a:1\nFETCH x\n", "unknown instruction"),
        ("FROM a:1\nCOPY --owner=1 a b\n", "unknown flag"),
        ("FROM a:1\nRUN --mount echo\n", "unknown flag"),
        ("FROM a:1\nRUN echo \\\n", "continuation"),
        ("FROM a:1\nRUN <<EOF\necho\nEOF\n", "heredocs"),
        ("FROM a:1\nWORKDIR\n", "without arguments"),
        ('FROM a:1\nENTRYPOINT ["a", 1]\n', "list of strings"),
    ],
)
def test_parser_is_strict(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        parse_dockerfile(text)


def test_parser_joins_continuations_and_drops_comments() -> None:
    text = (
        "# c\nARG V=1\nFROM a:1 AS b\n\n"
        "RUN --mount=type=cache,target=/x echo \\\n  # inner\n  one \\\n  two\n"
    )
    result = parse_dockerfile(text)
    assert [i.name for i in result] == ["ARG", "FROM", "RUN"]
    assert result[2].args == "echo one two"
    assert result[2].flags == {"mount": "type=cache,target=/x"}
    assert result[2].line == 5


def test_dockerignore_rules() -> None:
    assert dockerignore_includes("src/confserve/cli/_render.py")
    assert dockerignore_includes("pyproject.toml")
    assert not dockerignore_includes("tests/unit/cluster/test_docker.py")
    assert not dockerignore_includes(".venv/bin/python")
    assert not dockerignore_includes("src/confserve/__pycache__/x.pyc")
