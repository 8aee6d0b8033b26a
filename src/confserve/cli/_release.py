"""`confserve release`: the owner's signed model releases (docs/releases.md).

confserve release gen-key release/                      # release/release.key (0600), release.pub.pem
confserve model encrypt models/digits -w prov/wrap_key --out host/models/digits --bind-root models/digits
confserve release publish host/models/digits --model digits --bind-root models/digits \
        --key release/release.key
confserve release verify host/models/digits --model digits --bind-root models/digits \
        --public-key release/release.pub.pem
"""

from __future__ import annotations

from pathlib import Path

import click

from confserve import pf
from confserve.cli._common import fail, reports_errors
from confserve.releases import (
    MANIFEST_FILE,
    ReleaseError,
    ReleaseKey,
    load_public_key,
    manifest_for_tree,
    sign_release,
    verify_release,
)


@click.group("release")
def release_group() -> None:
    """Owner-signed model releases: which versions and files a replica may load, and how fresh."""


@release_group.command("gen-key")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@reports_errors
def gen_key(directory: Path) -> None:
    """Create DIRECTORY/release.key (Ed25519, 0600; stays with the owner) and release.pub.pem (goes into
    the replicas' configuration: `release_public_key`)."""
    key = ReleaseKey.generate()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private, public = directory / "release.key", directory / "release.pub.pem"
    if private.exists() or public.exists():
        fail(f"{directory} already holds a release key; not replacing it")
    pf.write_private_file(private, key.private_pem())
    pf.write_public_file(public, key.public_pem())
    click.echo(f"release key {key.key_id}: {private} (keep it), {public} (for the replicas)")


@release_group.command("publish")
@click.argument("base", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--model", required=True, help="The model's name (as the replicas serve it).")
@click.option("--bind-root", required=True, help="The root the files are bound to (as `model encrypt` used).")
@click.option(
    "--key", "key_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The release signing key (release.key).",
)  # fmt: skip
@click.option(
    "--release", "number", type=click.IntRange(0), help="Release number [default: the last one + 1]."
)
@click.option("--key-id", default="default", show_default=True, help="Id of the wrap key the files use.")
@reports_errors
def publish(base: Path, model: str, bind_root: str, key_path: Path, number: int | None, key_id: str) -> None:
    """Sign a release of the encrypted model tree BASE: every version directory and file in it now."""
    key = ReleaseKey.from_pem(key_path.read_bytes())
    manifest = base / MANIFEST_FILE
    previous = None
    if manifest.exists():
        try:
            previous = verify_release(manifest.read_bytes(), key.public_key, model=model).release
        except ReleaseError as e:
            fail(f"{manifest}: {e} (move it away to start the numbering again)")
    if number is None:
        number = 0 if previous is None else previous + 1
    elif previous is not None and number <= previous:
        fail(f"release {number} is not above the published release {previous}")
    text = sign_release(
        key, model=model, release=number, key_id=key_id, versions=manifest_for_tree(base, bind_root)
    )
    # a polling replica sees the old or the new manifest, never half of one
    pf.write_public_file(manifest, text, replace=True)
    click.echo(f"release {number} of model {model!r} written to {manifest}")


@release_group.command("verify")
@click.argument("base", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--model", required=True)
@click.option("--bind-root", required=True, help="The root the files are bound to (as `model encrypt` used).")
@click.option(
    "--public-key", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The owner's release.pub.pem.",
)  # fmt: skip
@click.option(
    "--floor", type=click.IntRange(0), default=0, show_default=True, help="Lowest acceptable release."
)
@reports_errors
def verify_cmd(base: Path, model: str, bind_root: str, public_key: Path, floor: int) -> None:
    """Check BASE's release manifest and that every file it lists is there, unchanged."""
    release = verify_release(
        (base / MANIFEST_FILE).read_bytes(),
        load_public_key(public_key.read_bytes()),
        model=model,
        floor=floor,
    )
    prefix = bind_root.rstrip("/") + "/"
    problems = 0
    for version, files in sorted(release.versions.items()):
        for bound in sorted(files):
            try:
                if not bound.startswith(prefix):
                    raise ValueError(f"not under the bind root {bind_root}")
                release.check_file(version, bound, (base / bound[len(prefix) :]).read_bytes())
            except (OSError, ValueError) as e:
                problems += 1
                click.echo(f"  {bound}: {e}", err=True)
    if problems:
        fail(f"{problems} file(s) of release {release.release} are missing or changed")
    click.echo(
        f"release {release.release} of model {model!r}: {len(release.versions)} version(s), all files match"
    )
