"""The simulation overlay on a real engine: the key service, two replicas and the passthrough load
balancer from the built images, an attested inference through it, a refused replica, and a tear-down
that leaves nothing. The last test removes the cluster: keep it last in this file."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

from confserve import tensor_proto
from confserve.cluster import _container_cluster as cc
from confserve.cluster import _containers as c
from confserve.cluster._k8s_common import GRPC_HOST
from confserve.cluster._workspace import Workspace
from confserve.tfs_protos import predict_pb2, prediction_service_pb2_grpc

pytestmark = pytest.mark.containers


def _plan(cluster: cc.SimulationResult) -> c.Plan:
    assert cluster.plan is not None
    return cluster.plan


def test_attested_inference_through_the_load_balancer(cluster: cc.SimulationResult) -> None:
    """`confserve predict --attest` in the client image: the endpoint behind nginx proves it is the
    measured enclave before any data is sent; then a held-out digit is classified."""
    assert cluster.passed, (cluster.label, cluster.predicted)
    assert cluster.attested_line.startswith("attested: simulated enclave mr_enclave ")
    assert cluster.mr_enclave in cluster.attested_line
    assert cluster.releases == 2  # each replica attested and got the model key once


def test_unchanged_tf_serving_stubs_from_the_host(cluster: cc.SimulationResult, workspace: Workspace) -> None:
    """TF Serving's own PredictionService stub with two-way TLS, from the host, to the port the load
    balancer publishes on 127.0.0.1."""
    from confserve.owner._models import load_digits_dataset

    _, _, images, labels = load_digits_dataset()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(workspace.client / "ca.crt").read_bytes(),
        private_key=(workspace.client / "client.key").read_bytes(),
        certificate_chain=(workspace.client / "client.crt").read_bytes(),
    )
    target = f"127.0.0.1:{cluster.ports[GRPC_HOST]}"
    options = [("grpc.ssl_target_name_override", GRPC_HOST)]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = cc.MODEL
        request.inputs["image"].CopyFrom(tensor_proto.to_proto(images[:4]))
        response = stub.Predict(request, timeout=30)
    classes = tensor_proto.to_array(response.outputs["classes"])
    assert np.array_equal(classes, labels[:4])


def test_containers_run_as_the_objects_say(cluster: cc.SimulationResult, engine: c.Engine) -> None:
    for spec in _plan(cluster).containers():
        if spec.one_shot:
            continue
        info = json.loads(engine("inspect", spec.name))[0]
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, spec.name
        assert any("no-new-privileges" in opt for opt in host.get("SecurityOpt") or []), spec.name
        uid = engine("exec", spec.name, "id", "-u").strip()
        assert uid.isdigit()
        assert uid != "0", spec.name
        if spec.user is not None:
            assert info["Config"]["User"] == spec.user
        # cap-drop ALL: the process has no effective capability at all.
        status = engine("exec", spec.name, "cat", "/proc/self/status")
        cap_eff = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
        assert int(cap_eff, 16) == 0, spec.name


def test_only_the_load_balancer_publishes_and_only_on_loopback(
    cluster: cc.SimulationResult, engine: c.Engine
) -> None:
    plan = _plan(cluster)
    for spec in plan.containers():
        if spec.one_shot:
            continue
        published = engine("port", spec.name).strip().splitlines()
        if spec.name == c.LB_NAME:
            assert len(published) == 2
            assert all(line.split("->")[1].strip().startswith("127.0.0.1:") for line in published)
        else:
            assert published == [], spec.name
    internal = json.loads(engine("network", "inspect", plan.internal_network))[0]
    assert internal["internal"] is True


def test_a_replica_with_other_measured_arguments_gets_no_key(
    cluster: cc.SimulationResult, engine: c.Engine, settings: cc.SimulationSettings
) -> None:
    """The same image with one measured flag changed is another enclave: the key service refuses it,
    so it never loads the model or opens a port."""
    plan = _plan(cluster)
    rogue = replace(
        plan.find("confserve-model-server-0"),
        name="confserve-model-server-rogue",
        args=(*plan.find("confserve-model-server-0").args, "--allow_plaintext"),
        aliases=(),
    )
    args = c.container_args(
        rogue, plan, staging=settings.staging, ulimits=c.host_ulimits(), engine=engine.name
    )
    engine(*args)
    engine("start", rogue.name)
    try:
        refused: list[dict[str, object]] = []
        deadline = time.monotonic() + 90
        while not refused and time.monotonic() < deadline:
            time.sleep(2)
            for name in ("secret-prov-0", "secret-prov-1", "secret-prov-2"):
                log = engine("exec", name, "cat", "/var/lib/confserve/audit/audit.log", check=False)
                entries = [json.loads(line) for line in log.splitlines() if line.strip()]
                refused += [e for e in entries if e.get("outcome") == "refused"]
        assert refused, "the key service logged no refusal"
        identities = [e.get("identity") for e in refused]
        assert all(isinstance(i, dict) and i.get("mr_enclave") != cluster.mr_enclave for i in identities)
        assert rogue.readiness is not None
        assert not engine.ok("exec", rogue.name, *rogue.readiness.argv())
    finally:
        engine("rm", "--force", "--time", "1", rogue.name)


def test_tear_down_leaves_nothing(
    cluster: cc.SimulationResult, engine: c.Engine, settings: cc.SimulationSettings
) -> None:
    removed = c.down(engine, settings.name, settings.staging)
    assert c.LB_NAME in removed
    assert "confserve-model-server-1" in removed
    for kind in ("container", "volume", "network"):
        assert engine.labelled(kind, settings.name) == [], kind  # type: ignore[arg-type]
    assert not settings.staging.exists()
    assert not c.memory_root(settings.name).exists()
    assert c.down(engine, settings.name, settings.staging) == []
