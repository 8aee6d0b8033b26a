"""`confserve release`: the owner's signed model releases (docs/releases.md).

confserve release gen-key release/                      # release/release.key (0600), release.pub.pem
confserve model encrypt models/digits -w prov/wrap_key --out host/models/digits --bind-root models/digits
confserve release publish host/models/digits --model digits --bind-root models/digits \
        --key release/release.key
confserve release verify host/models/digits --model digits --bind-root models/digits \
        --public-key release/release.pub.pem
confserve release rotate host/models/digits --model digits --bind-root models/digits \
        --key release/release.key --old-wrap-key keys/digits --new-wrap-key keys/digits-2 \
        --new-key-id digits-2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from confserve import owner, pf
from confserve.cli._common import fail, option_group, reports_errors
from confserve.releases import MANIFEST_FILE, ReleaseError, ReleaseKey, load_public_key, verify_release

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)  # an existing file


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


@dataclass(frozen=True)
class _Tree:
    """The encrypted model tree a release is about: BASE, the model's name, its files' bind root."""

    base: Path
    model: str
    bind_root: str


_tree_options = option_group(
    "tree",
    _Tree,
    click.argument("base", type=click.Path(file_okay=False, exists=True, path_type=Path)),
    click.option("--model", required=True, help="The model's name (as the replicas serve it)."),
    click.option(
        "--bind-root", required=True, help="The root the files are bound to (as `model encrypt` used)."
    ),
)


def _signing_key(key_path: Path) -> ReleaseKey:
    return ReleaseKey.from_pem(key_path.read_bytes())


_signing_key_option = option_group(
    "key",
    _signing_key,
    click.option(
        "--key", "key_path", required=True, type=_FILE, help="The release signing key (release.key)."
    ),
)


@release_group.command("publish")
@_tree_options
@_signing_key_option
@click.option(
    "--release", "number", type=click.IntRange(0), help="Release number [default: the last one + 1]."
)
@click.option(
    "--key-id",
    help="Id of the wrap key the files use (its secret name at the key service) "
    "[default: the last release's, else 'default'].",
)
@reports_errors
def publish(tree: _Tree, key: ReleaseKey, number: int | None, key_id: str | None) -> None:
    """Sign a release of the encrypted model tree BASE: every version directory and file in it now."""
    release = owner.publish_release(
        tree.base, model=tree.model, bind_root=tree.bind_root, key=key, key_id=key_id, number=number
    )
    click.echo(
        f"release {release.release} of model {tree.model!r} (key {release.key_id!r}) written to "
        f"{tree.base / MANIFEST_FILE}"
    )


@release_group.command("rotate")
@_tree_options
@_signing_key_option
@click.option("--old-wrap-key", required=True, type=_FILE, help="The wrap key the current release uses.")
@click.option(
    "--new-wrap-key", required=True, type=_FILE, help="The new wrap key (confserve pf gen-key -w FILE)."
)
@click.option("--new-key-id", required=True, help="The new key's id (its secret name at the key service).")
@reports_errors
def rotate(tree: _Tree, key: ReleaseKey, old_wrap_key: Path, new_wrap_key: Path, new_key_id: str) -> None:
    """Re-encrypt the current release of BASE under a new wrap key, as new version numbers, and publish
    the next release listing only those (docs/releases.md, "Key rotation": let the policy grant both keys
    first; retire the old one once the replicas have moved)."""
    release, renumbered = owner.rotate_key(
        tree.base,
        model=tree.model,
        bind_root=tree.bind_root,
        key=key,
        old_key=pf.WrapKey.load(old_wrap_key),
        new_key=pf.WrapKey.load(new_wrap_key),
        new_key_id=new_key_id,
    )
    moved = ", ".join(f"{old} -> {new}" for old, new in renumbered.items())
    click.echo(f"release {release.release} of model {tree.model!r}: key {new_key_id!r}, versions {moved}")


@release_group.command("verify")
@_tree_options
@click.option("--public-key", required=True, type=_FILE, help="The owner's release.pub.pem.")
@click.option(
    "--floor", type=click.IntRange(0), default=0, show_default=True, help="Lowest acceptable release."
)
@reports_errors
def verify_cmd(tree: _Tree, public_key: Path, floor: int) -> None:
    """Check BASE's release manifest and that every file it lists is there, unchanged."""
    base = tree.base
    release = verify_release(
        (base / MANIFEST_FILE).read_bytes(),
        load_public_key(public_key.read_bytes()),
        model=tree.model,
        floor=floor,
    )
    prefix = tree.bind_root.rstrip("/") + "/"
    problems = 0
    for version, files in sorted(release.versions.items()):
        for bound in sorted(files):
            try:
                if not bound.startswith(prefix):
                    raise ValueError(f"not under the bind root {tree.bind_root}")
                release.check_file(version, bound, (base / bound[len(prefix) :]).read_bytes())
            except (OSError, ValueError, ReleaseError) as e:
                problems += 1
                click.echo(f"  {bound}: {e}", err=True)
        directory = base / str(version)
        for path in sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else ():
            bound = f"{prefix}{path.relative_to(base).as_posix()}"
            if bound not in files:
                problems += 1
                click.echo(f"  {bound}: not in the release", err=True)
    if problems:
        fail(f"{problems} file(s) of release {release.release} are missing, changed or added")
    click.echo(
        f"release {release.release} of model {tree.model!r}: {len(release.versions)} version(s), "
        "all files match"
    )
