"""The end-to-end check of a running local cluster: an attested inference through the load balancer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from confserve.attestation import load_policy_file, load_simulated_root
from confserve.client import AttestationCheck, ClientTls, PredictClient
from confserve.cluster._local import ClusterState
from confserve.cluster._workspace import SERVICE_DOMAIN, Workspace

__all__ = ["CheckResult", "audit_entries", "check_cluster"]


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    attested_mr_enclave: str
    summary: str  # what was sent and what came back, for people
    outputs: dict[str, Any]
    signature: dict[str, Any]  # name, inputs and outputs (dtype, shape) of the checked signature


def check_cluster(ws: Workspace, state: ClusterState) -> CheckResult:
    """Attest the endpoint behind nginx with the owner's policy, then send a real input."""
    tls = ClientTls.from_bundle(ws.client, server_name=SERVICE_DOMAIN)
    check = AttestationCheck(load_policy_file(ws.policy), load_simulated_root(ws.sim_public))
    with PredictClient(f"127.0.0.1:{state.lb_grpc_port}", tls=tls) as client:
        attested = client.attest(check)
        signature = client.signature(state.model)
        if state.model == "digits":
            from confserve.owner import load_digits_dataset  # noqa: PLC0415

            _, _, images, labels = load_digits_dataset()
            image, label = images[:1], int(labels[0])
            out = client.predict(state.model, {"image": image})
            predicted = int(out["classes"][0])
            confidence = float(out["probabilities"][0][predicted])
            passed = predicted == label
            summary = f"digit {label} (a held-out test image) predicted as {predicted} (p={confidence:.3f})"
        else:
            from confserve.client import random_inputs  # noqa: PLC0415

            out = client.predict(state.model, random_inputs(signature, batch=1, seed=0))
            passed = all(np.all(np.isfinite(v)) for v in out.values() if v.dtype.kind == "f")
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in out.items())
            summary = f"random input of the {signature.name!r} signature -> {shapes}"
    described = {
        "name": signature.name,
        "inputs": {k: {"dtype": v.dtype, "shape": v.shape} for k, v in signature.inputs.items()},
        "outputs": {k: {"dtype": v.dtype, "shape": v.shape} for k, v in signature.outputs.items()},
    }
    outputs = {k: v.tolist() for k, v in out.items()}
    return CheckResult(passed, attested.evidence.identity.mr_enclave.hex(), summary, outputs, described)


def audit_entries(ws: Workspace) -> list[dict[str, Any]]:
    """The provisioning service's decisions, oldest first (the log is hash-chained; see audit-verify)."""
    try:
        lines = ws.audit_log.read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
