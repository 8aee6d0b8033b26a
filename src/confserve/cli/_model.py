"""`confserve model`: example models, frozen-graph import, encryption and inspection of model trees."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from confserve import owner, pf
from confserve.cli._common import reports_errors
from confserve.releases import ReleaseKey

_OUT = click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model base path."
)
_VERSION = click.option("--version", type=click.IntRange(min=1), default=1, show_default=True)


@click.group("model")
def model_group() -> None:
    """Make, import, encrypt and inspect TF Serving model trees (BASE/VERSION/saved_model.pb)."""


@model_group.group("example")
def example() -> None:
    """Build an example model."""


@example.command("digits")
@_OUT
@_VERSION
@click.option("--epochs", type=click.IntRange(1, 200), default=15, show_default=True)
@reports_errors
def example_digits(out_dir: str, version: int, epochs: int) -> None:
    """A small CNN trained on scikit-learn's 8x8 digits (input `image` [N,8,8,1], outputs `probabilities`,
    `classes`); the default demo model. Trains in seconds and prints its test accuracy."""
    click.echo("training a CNN on scikit-learn's digits images ...", err=True)
    result = owner.make_digits_model(out_dir, version=version, epochs=epochs)
    click.echo(
        f"saved {result.path}: test accuracy {result.test_accuracy:.1%} "
        f"({result.train_examples} training / {result.test_examples} test images)"
    )


@example.command("resnet50")
@_OUT
@_VERSION
@click.option("--weights", type=click.Path(dir_okay=False, exists=True), help="Keras weights file to load.")
@reports_errors
def example_resnet50(out_dir: str, version: int, weights: str | None) -> None:
    """ResNet-50 v1 with the reference model's signature (input `input` [N,224,224,3] float32, output
    `predict` [N,1001]); random weights unless --weights is given."""
    click.echo("building ResNet-50 ...", err=True)
    path = owner.make_resnet50_model(out_dir, version=version, weights=weights)
    click.echo(f"saved {path} ({'weights from ' + weights if weights else 'random weights'})")


@model_group.command("import-frozen-graph")
@click.argument("graph", type=click.Path(dir_okay=False, exists=True))
@click.option("--inputs", required=True, help="Comma-separated input tensor names.")
@click.option("--outputs", required=True, help="Comma-separated output tensor names.")
@_OUT
@_VERSION
@reports_errors
def import_frozen_graph(graph: str, inputs: str, outputs: str, out_dir: str, version: int) -> None:
    """Convert a frozen GraphDef into a SavedModel (the reference's model_graph_to_saved_model.py)."""
    path = owner.import_frozen_graph(
        graph,
        inputs=[n for n in inputs.split(",") if n],
        outputs=[n for n in outputs.split(",") if n],
        out=out_dir,
        version=version,
    )
    click.echo(f"saved {path}")


@model_group.command("encrypt")
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--wrap-key", "-w", required=True, type=click.Path(dir_okay=False, exists=True))
@_OUT
@click.option(
    "--bind-root",
    help="The model's base path as the server opens it (default: --out as given).",
)
@click.option("--format-version", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option(
    "--key-id",
    help="The wrap key's id: its secret name at the key service (per-model keys: the model's name). "
    "Recorded in the release [default: the file name of --wrap-key].",
)
@click.option(
    "--release-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Publish the next signed release of OUT with this key (confserve release gen-key).",
)
@click.option("--model", "model_name", help="The model's name in the release [default: OUT's name].")
@click.option("-v", "--verbose", is_flag=True)
@reports_errors
def encrypt(
    model_dir: str,
    wrap_key: str,
    out_dir: str,
    bind_root: str | None,
    format_version: str,
    key_id: str | None,
    release_key: Path | None,
    model_name: str | None,
    verbose: bool,
) -> None:
    """Encrypt every file of every version of MODEL_DIR into OUT, bound to the paths the server opens;
    with --release-key, publish the tree as the model's next release, recording the key id."""
    if release_key is None and (key_id is not None or model_name is not None):
        raise click.UsageError("--key-id and --model are recorded in a release: give --release-key")
    entries = owner.encrypt_model_tree(
        model_dir, out_dir, pf.WrapKey.load(wrap_key), bind_root=bind_root, format_version=int(format_version)
    )
    for entry in entries:
        if verbose:
            click.echo(f"{entry.relative_path}: {entry.size} bytes, bound to {entry.bound_path}")
    versions = sorted({e.relative_path.split("/")[0] for e in entries}, key=int)
    root = bind_root if bind_root is not None else out_dir
    click.echo(
        f"encrypted {len(entries)} files of versions {', '.join(versions)} into {out_dir}; "
        f"serve with --model_base_path {root}"
    )
    if release_key is not None:
        release = owner.publish_release(
            Path(out_dir),
            model=model_name or Path(out_dir).resolve().name,
            bind_root=root,
            key=ReleaseKey.from_pem(release_key.read_bytes()),
            key_id=key_id or Path(wrap_key).name,
        )
        click.echo(f"release {release.release} of model {release.model!r} (key {release.key_id!r}) published")


@model_group.command("inspect")
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--wrap-key", "-w", type=click.Path(dir_okay=False, exists=True), help="To read encrypted signatures."
)
@click.option(
    "--bind-root", help="The tree's base path as bound at encryption (default: MODEL_DIR as given)."
)
@click.option("--json", "as_json", is_flag=True)
@reports_errors
def inspect(model_dir: str, wrap_key: str | None, bind_root: str | None, as_json: bool) -> None:
    """Show versions, signatures and which files are encrypted."""
    key = pf.WrapKey.load(wrap_key) if wrap_key else None
    infos = owner.inspect_model_tree(model_dir, key=key, bind_root=bind_root)
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=1))
        return
    for info in infos:
        encrypted = sum(info.files.values())
        note = f"; {info.note}" if info.note else ""
        click.echo(f"version {info.version}: {len(info.files)} files, {encrypted} encrypted{note}")
        for sig in info.signatures:
            click.echo(f"  signature {sig.name!r} ({sig.method})")
            for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
                for alias, (dtype, shape) in tensors.items():
                    dims = (
                        "?"
                        if shape is None
                        else "[" + ",".join("N" if d < 0 else str(d) for d in shape) + "]"
                    )
                    click.echo(f"    {kind} {alias}: {dtype} {dims}")
