"""`confserve predict`: send one inference to a TF Serving endpoint (confserve or TF Serving itself)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click

from confserve.cli._common import option_group, reports_errors
from confserve.client import (
    ClientError,
    ClientTls,
    PredictClient,
    as_json,
    describe,
    inputs_from_image,
    inputs_from_json,
    inputs_from_npy,
    random_inputs,
)
from confserve.files import MAX_SMALL_FILE_BYTES, read_input


def _split_input(value: str) -> tuple[str | None, str]:
    name, sep, path = value.partition("=")
    return (name, path) if sep and name and not Path(value).exists() else (None, value)


def attestation_check(policy_file: str, sim_platform: str | None, collateral_file: str | None) -> Any:
    """The client's trust for --attest: the policy, Intel's root or a simulated platform's (its public
    part is enough: root certificate, and collateral when the directory holds it), collateral."""
    from confserve.attestation import SIM_COLLATERAL_FILE, Collateral, load_policy_file, verifier_trust  # noqa: PLC0415
    from confserve.client import AttestationCheck  # noqa: PLC0415

    policy = load_policy_file(Path(policy_file))
    sim_root = Path(sim_platform) if sim_platform else None
    chosen = verifier_trust(sim_root=sim_root)
    # Collateral for when the server sends none: the file given, else the platform's published set.
    if collateral_file is None and sim_root is not None and (sim_root / SIM_COLLATERAL_FILE).is_file():
        collateral_file = str(sim_root / SIM_COLLATERAL_FILE)
    collateral = Collateral.from_file(collateral_file) if collateral_file else None
    return AttestationCheck(policy, chosen.trust, collateral)


def client_tls(
    tls_bundle: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    server_name: str | None,
    plaintext: bool,
) -> ClientTls | None:
    if plaintext:
        if tls_bundle or ca or cert or key:
            raise ClientError("--plaintext cannot be combined with TLS options")
        return None
    if tls_bundle:
        if ca or cert or key:
            raise ClientError("give either --tls-bundle or --ca/--cert/--key, not both")
        return ClientTls.from_bundle(tls_bundle, server_name=server_name)
    if not ca:
        raise ClientError(
            "give --tls-bundle DIR (or --ca FILE), or --plaintext for an unencrypted test server"
        )
    return ClientTls(
        read_input(ca, max_bytes=MAX_SMALL_FILE_BYTES),
        Path(cert) if cert else None,
        Path(key) if key else None,
        server_name,
    )


client_tls_options = option_group(
    "tls",
    client_tls,
    click.option("--tls-bundle", type=click.Path(file_okay=False, exists=True), help="Client bundle dir."),
    click.option("--ca", type=click.Path(dir_okay=False, exists=True), help="CA certificate (PEM)."),
    click.option("--cert", type=click.Path(dir_okay=False, exists=True), help="Client certificate."),
    click.option("--key", type=click.Path(dir_okay=False, exists=True), help="Client private key."),
    click.option("--server-name", help="Name the server's certificate must carry (default: TARGET host)."),
    click.option("--plaintext", is_flag=True, help="No TLS at all (only for a local test server)."),
)


@dataclass(frozen=True)
class _Endpoint:
    """Which model to call, where and how: the options `predict` and `bench-client` share."""

    target: str
    model: str
    protocol: Literal["grpc", "rest"]
    tls: ClientTls | None
    signature_name: str
    timeout_seconds: float

    def client(self) -> PredictClient:
        return PredictClient(
            self.target, protocol=self.protocol, tls=self.tls, timeout_seconds=self.timeout_seconds
        )


_endpoint_options = option_group(
    "endpoint",
    _Endpoint,
    click.argument("target"),
    click.option("--model", "-m", "model", required=True, help="Model name."),
    click.option("--protocol", type=click.Choice(["grpc", "rest"]), default="grpc", show_default=True),
    client_tls_options,
    click.option("--signature", "signature_name", default="", help="Signature name [serving_default]."),
    click.option(
        "--timeout",
        "timeout_seconds",
        type=click.FloatRange(0.1, 3600),
        default=30.0,
        show_default=True,
        help="Seconds.",
    ),
)


@click.command("predict")
@_endpoint_options
@click.option("--model-version", "version", type=int, help="Model version [the latest served].")
@click.option("--label", help="Version label.")
@click.option("--input", "-i", "npy_inputs", multiple=True, help="[NAME=]FILE.npy (repeatable).")
@click.option(
    "--json-input", type=click.Path(dir_okay=False, exists=True), help="TF Serving JSON request body."
)
@click.option("--image", type=click.Path(dir_okay=False, exists=True), help="Image file for an image input.")
@click.option("--image-scale", type=float, default=1 / 255, show_default=True, help="Pixel value multiplier.")
@click.option("--invert", is_flag=True, help="Invert the image (dark ink on white paper -> bright ink).")
@click.option("--random", "use_random", is_flag=True, help="Random data of the signature's input shapes.")
@click.option(
    "--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Batch size for --random."
)
@click.option("--output", "outputs", multiple=True, help="Only these outputs (repeatable).")
@click.option("--top-k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--json", "as_json_output", is_flag=True, help="Machine-readable output.")
@click.option(
    "--attest",
    "attest_policy",
    type=click.Path(dir_okay=False, exists=True),
    help="Policy file: before sending data, check the server is an enclave this policy approves.",
)
@click.option(
    "--attest-sim-platform",
    type=click.Path(file_okay=False, exists=True),
    help="Trust this simulated platform's root for --attest: its public part (sim-platform publish) or "
    "its root certificate (default: Intel's root only).",
)
@click.option(
    "--attest-collateral",
    type=click.Path(dir_okay=False, exists=True),
    help="Collateral for --attest when the server sends none.",
)
@reports_errors
def predict(
    endpoint: _Endpoint,
    version: int | None,
    label: str | None,
    npy_inputs: tuple[str, ...],
    json_input: str | None,
    image: str | None,
    image_scale: float,
    invert: bool,
    use_random: bool,
    batch: int,
    outputs: tuple[str, ...],
    top_k: int,
    as_json_output: bool,
    attest_policy: str | None,
    attest_sim_platform: str | None,
    attest_collateral: str | None,
) -> None:
    """Send one Predict request to TARGET (HOST:PORT) and print the result."""
    kinds = sum(bool(k) for k in (npy_inputs, json_input, image, use_random))
    if kinds != 1:
        raise ClientError("give exactly one input: --input, --json-input, --image or --random")
    model, signature_name = endpoint.model, endpoint.signature_name
    with endpoint.client() as client:
        if attest_policy is not None:
            attested = client.attest(attestation_check(attest_policy, attest_sim_platform, attest_collateral))
            ident = attested.evidence.identity
            click.echo(
                f"attested: {'simulated ' if attested.evidence.simulated else ''}enclave mr_enclave "
                f"{ident.mr_enclave.hex()} ({attested.evidence.tcb_status}), accepted by rule "
                f"{attested.decision.rule!r}",
                err=as_json_output,
            )
        elif attest_sim_platform or attest_collateral:
            raise ClientError("--attest-sim-platform and --attest-collateral go with --attest POLICY")
        signature = client.signature(model, signature_name, version)
        if npy_inputs:
            inputs = inputs_from_npy(signature, dict(_split_input(v) for v in npy_inputs))
        elif json_input:
            inputs = inputs_from_json(signature, json_input)
        elif image:
            inputs = inputs_from_image(signature, image, scale=image_scale, invert=invert)
        else:
            inputs = random_inputs(signature, batch=batch)
        result = client.predict(
            model, inputs, signature_name=signature_name, version=version, label=label, outputs=outputs
        )
    if as_json_output:
        click.echo(json.dumps({"model": model, "signature": signature.name, "outputs": as_json(result)}))
        return
    click.echo(
        f"model {model!r}, signature {signature.name!r}, over {endpoint.protocol}"
        f"{'' if endpoint.tls else ' (plaintext)'}"
    )
    for line in describe(result, top_k=top_k):
        click.echo(line)


@click.command("bench-client")
@_endpoint_options
@click.option(
    "--batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Examples per request."
)
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option(
    "--processes", "-p", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes."
)
@click.option("--requests", "-n", "n_requests", type=click.IntRange(1), help="Requests to send [100].")
@click.option("--duration", type=click.FloatRange(0.1), help="Seconds to run (instead of --requests).")
@click.option("--json", "as_json_output", is_flag=True, help="Machine-readable result.")
@reports_errors
def bench_client(
    endpoint: _Endpoint,
    batch: int,
    concurrency: int,
    processes: int,
    n_requests: int | None,
    duration: float | None,
    as_json_output: bool,
) -> None:
    """Load-test TARGET with random inputs of the model's signature; print latency percentiles and
    throughput (the reference's resnet_client_grpc.py -batch -cnum -loop)."""
    from confserve.client import LoadSpec, run_load  # noqa: PLC0415

    if n_requests is not None and duration is not None:
        raise ClientError("give --requests or --duration, not both")
    with endpoint.client() as client:
        inputs = random_inputs(client.signature(endpoint.model, endpoint.signature_name), batch=batch, seed=0)
    spec = LoadSpec(
        target=endpoint.target,
        model=endpoint.model,
        inputs=inputs,
        protocol=endpoint.protocol,
        tls=endpoint.tls,
        signature_name=endpoint.signature_name,
        concurrency=concurrency,
        processes=processes,
        requests=(n_requests or 100) if duration is None else None,
        duration_seconds=duration,
        timeout_seconds=endpoint.timeout_seconds,
    )
    click.echo(f"starting {processes} worker process(es), {concurrency} in flight ...", err=True)
    result = run_load(spec, progress=_progress_printer())
    click.echo("", err=True)
    if as_json_output:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(
        f"{result.requests} requests in {result.seconds:.2f} s, {result.errors} errors: "
        f"{result.throughput_rps:.1f} req/s, {result.examples_per_second:.1f} examples/s"
    )
    click.echo(
        f"latency ms: p50 {result.p50_ms:.2f}  p90 {result.p90_ms:.2f}  p99 {result.p99_ms:.2f}  "
        f"max {result.max_ms:.2f}"
    )
    if result.first_error:
        click.echo(f"first error: {result.first_error}")


def _progress_printer() -> Any:
    state = {"last": -1}

    def show(done: int, total: int | None) -> None:
        if done == state["last"]:
            return
        state["last"] = done
        if total:
            filled = int(30 * done / total)
            click.echo(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", err=True, nl=False)
        else:
            click.echo(f"\r{done} requests", err=True, nl=False)

    return show
