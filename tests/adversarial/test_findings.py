"""Regression tests for the adversarial review's findings on file inputs (F4, F5); F2 is in
test_rest_framing.py, F1 in test_grpc_fuzz.py and F7 in test_rest_fuzz.py.

F4: every file confserve reads because someone named it refuses a FIFO, a device, a socket or a directory
at once with one clear error (confserve.files), where `pf info -i FIFO` used to block forever in open().
Commands run as processes with a timeout, so a regression fails instead of hanging the suite.

F5: the protected-file reader allocated the header's stated size before checking any data node, so a
crafted header (made with the key) over a sparse file raised MemoryError.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from confserve import pf
from confserve.pf._crypto import derive_metadata_key, gcm_decrypt, gcm_encrypt
from confserve.pf._format import (
    ATTACHED_DATA_NODES,
    CRYPTO_ENTRY_SIZE,
    ENCRYPTED_HEADER_OFFSET,
    HDR_OFF_ROOT_KEY,
    HDR_OFF_ROOT_MAC,
    HDR_OFF_SIZE,
    HEADER_SIZE,
    KDF_NONCE_SIZE,
    KEY_SIZE,
    MHT_OFF_CHILDREN,
    NODE_SIZE,
    OFF_META_MAC,
    OFF_NONCE,
    SIZE_STRUCT,
    data_node_count,
    data_node_physical,
    host_size,
    mht_node_physical,
    mht_parent,
)

KINDS = ("fifo", "directory", "socket", "device")
_TIMEOUT_SECONDS = 60


@pytest.fixture
def special(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """special(kind, name): a path named `name` that is a FIFO, a directory, a socket or /dev/zero."""
    sockets: list[socket.socket] = []

    def make(kind: str, name: str) -> Path:
        path = tmp_path / "special" / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        elif kind == "socket":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(os.fspath(path))
            sockets.append(sock)
        else:
            path.symlink_to("/dev/zero")
        return path

    yield make
    for sock in sockets:
        sock.close()


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Genuine inputs for the arguments that are not under test."""
    from confserve.attestation import SimPlatform
    from tests.unit.attestation.dcap_helpers import SIM_NOW

    root = tmp_path_factory.mktemp("material")
    key = pf.WrapKey.generate()
    key.save(root / "wrap-key")
    (root / "file.pf").write_bytes(pf.encrypt_bytes(b"x", key, bound_path="file.pf"))
    (root / "plain").write_bytes(b"plain")
    SimPlatform.init(root / "platform", now=SIM_NOW)
    return {
        "key": root / "wrap-key",
        "pf": root / "file.pf",
        "plain": root / "plain",
        "platform": root / "platform",
    }


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from confserve.cli import main; main()", *args]
    try:
        return subprocess.run(
            command, check=False, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"confserve {' '.join(args)} blocked (F4)") from None


# Each entry point: a name and the argv with "{bad}" where the special file goes.
CLI_ENTRY_POINTS: dict[str, list[str]] = {
    "pf info": ["pf", "info", "-i", "{bad}"],
    "pf verify": ["pf", "verify", "-w", "{key}", "-i", "{bad}"],
    "pf decrypt": ["pf", "decrypt", "-w", "{key}", "-i", "{bad}", "-o", "{out}"],
    "pf encrypt": ["pf", "encrypt", "-w", "{key}", "-i", "{bad}", "-o", "{out}"],
    "pf wrap key": ["pf", "verify", "-w", "{bad}", "-i", "{pf}"],
    "attest verify-quote": [
        "attest",
        "verify-quote",
        "{bad}",
        "--sim-platform",
        "{platform}",
        "--allow-simulated",
    ],
    "attest show-cert": ["attest", "show-cert", "{bad}"],
    "measure --sigstruct": ["measure", "--sigstruct", "{bad}"],
    "measure --config": ["measure", "--config", "{bad}", "--signing-key", "{plain}"],
    "policy": ["policy", "--out", "{out}", "{bad}"],
    "serve --config": ["serve", "--config", "{bad}"],
    "serve --ssl_config_file": [
        "serve",
        "--model_name=m",
        "--model_base_path=/nonexistent",
        "--ssl_config_file={bad}",
        "--allow_plaintext",
    ],
    "predict --ca": ["predict", "127.0.0.1:9", "-m", "clf", "--ca", "{bad}", "--random"],
}
CLI_KINDS = [(name, "fifo") for name in CLI_ENTRY_POINTS] + [
    (name, kind) for name in ("pf info", "serve --config", "attest show-cert") for kind in KINDS[1:]
]


@pytest.mark.parametrize(("entry", "kind"), CLI_KINDS)
def test_f4_cli_refuses_special_files(
    entry: str, kind: str, special: Callable[[str, str], Path], material: dict[str, Path], tmp_path: Path
) -> None:
    bad = special(kind, "input.toml" if entry == "serve --config" else "input")
    values = {"bad": str(bad), "out": str(tmp_path / "out"), **{k: str(v) for k, v in material.items()}}
    result = _cli([arg.format(**values) for arg in CLI_ENTRY_POINTS[entry]], tmp_path)
    assert result.returncode in (1, 2), (result.stdout, result.stderr)  # 2: click's own check of the option
    assert "Traceback" not in result.stderr
    reason = result.stderr.lower()
    assert "not a regular file" in reason or (kind == "directory" and "is a directory" in reason), (
        result.stderr
    )
    assert not (tmp_path / "out").exists()


def _library_entry_points(material: dict[str, Path]) -> dict[str, Callable[[Path], Any]]:
    from confserve.attestation import Collateral, load_policy_file, load_simulated_root
    from confserve.client import ClientTls
    from confserve.provisioning import read_secret_file, verify_audit_log
    from confserve.replica._enclave import file_sha256
    from confserve.serving import PlainOpener

    key = pf.WrapKey.load(material["key"])
    return {
        "pf.header_facts": pf.header_facts,
        "pf.read_protected": lambda p: pf.read_protected(p, key, bound_path=None),
        "pf.verify_file": lambda p: pf.verify_file(p, key, bound_path=None),
        "pf.decrypt_file": lambda p: pf.decrypt_file(p, p.parent / "out", key, bound_path=None),
        "pf.encrypt_file": lambda p: pf.encrypt_file(p, p.parent / "out", key),
        "pf.WrapKey.load": pf.WrapKey.load,
        "load_policy_file": load_policy_file,
        "load_simulated_root": load_simulated_root,
        "Collateral.from_file": Collateral.from_file,
        "read_secret_file": read_secret_file,
        "verify_audit_log": verify_audit_log,
        "replica file_sha256": file_sha256,
        "PlainOpener.read_bytes": lambda p: PlainOpener().read_bytes(str(p)),
        "ClientTls.from_bundle": lambda p: ClientTls.from_bundle(p.parent),
    }


LIBRARY_NAMES = (
    "pf.header_facts", "pf.read_protected", "pf.verify_file", "pf.decrypt_file", "pf.encrypt_file",
    "pf.WrapKey.load", "load_policy_file", "load_simulated_root", "Collateral.from_file", "read_secret_file",
    "verify_audit_log", "replica file_sha256", "PlainOpener.read_bytes", "ClientTls.from_bundle",
)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", LIBRARY_NAMES)
def test_f4_library_refuses_special_files(
    entry: str, kind: str, special: Callable[[str, str], Path], material: dict[str, Path]
) -> None:
    name = {"load_policy_file": "policy.toml", "ClientTls.from_bundle": "ca.crt"}.get(entry, "input")
    call = _library_entry_points(material)[entry]
    path = special(kind, name)
    if entry == "load_simulated_root" and kind == "directory":
        (path / "root_ca.cert.pem").mkdir()  # a directory is a platform's: its root file is the directory
    if entry == "read_secret_file" and kind == "device":
        path = Path("/dev/zero")  # not the test's symbolic link: secret files refuse links by design
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            call(path)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(_TIMEOUT_SECONDS)
    assert outcome, f"{entry} blocked on a {kind} (F4)"
    error = outcome[0]
    assert error is not None, f"{entry} accepted a {kind}"
    message = str(error).lower()
    assert "not a regular file" in message or (kind == "directory" and "is a directory" in message), repr(
        error
    )
    assert not (path.parent / "out").exists()


def test_f4_is_protected_says_no_for_special_files(special: Callable[[str, str], Path]) -> None:
    for kind in KINDS:
        assert pf.is_protected(special(kind, "x")) is False


# --- F5 ---------------------------------------------------------------------------------------------


def _rewrite_header(data: bytearray, key: pf.WrapKey, change: Callable[[bytearray], None]) -> None:
    """Decrypt the metadata header, let `change` edit it, encrypt it again (what the key holder can do)."""
    offset = ENCRYPTED_HEADER_OFFSET[data[8]]
    meta_key = derive_metadata_key(key.raw(), bytes(data[OFF_NONCE : OFF_NONCE + KDF_NONCE_SIZE]))
    header = bytearray(
        gcm_decrypt(
            meta_key, bytes(data[offset : offset + HEADER_SIZE] + data[OFF_META_MAC : OFF_META_MAC + 16])
        )
    )
    change(header)
    sealed = gcm_encrypt(meta_key, bytes(header))
    data[offset : offset + HEADER_SIZE] = sealed[:-16]
    data[OFF_META_MAC : OFF_META_MAC + 16] = sealed[-16:]


HUGE = 1 << 40  # 1 TiB of stated plaintext: more than any test machine's memory


def test_f5_crafted_size_over_a_sparse_file_is_an_integrity_error(tmp_path: Path) -> None:
    """The header states 1 TiB and the sparse file has that size on disk: the first data node read
    (the last one, before allocating) fails authentication; no MemoryError."""
    key = pf.WrapKey.generate()
    data = bytearray(pf.encrypt_bytes(b"x" * 5000, key, bound_path="m"))
    _rewrite_header(data, key, lambda h: SIZE_STRUCT.pack_into(h, HDR_OFF_SIZE, HUGE))
    path = tmp_path / "sparse.pf"
    with path.open("wb") as f:
        f.write(data)
        f.truncate(host_size(HUGE))
    assert path.stat().st_blocks * 512 < 1 << 20  # really sparse
    with pytest.raises(pf.IntegrityError):
        pf.read_protected(path, key, bound_path="m")
    with pytest.raises(pf.TooLargeError):
        pf.read_protected(path, key, bound_path="m", max_size=1 << 20)


def test_f5_genuine_tree_over_a_sparse_file_is_too_large_not_memory_error(tmp_path: Path) -> None:
    """The key holder's best forgery: a real MHT path down to a real last data node, the rest sparse.
    Every check passes, the plaintext cannot be held: TooLargeError, never MemoryError."""
    key = pf.WrapKey.generate()
    last = data_node_count(HUGE) - 1
    plain_last = b"L" * NODE_SIZE
    node_key = os.urandom(KEY_SIZE)
    sealed = gcm_encrypt(node_key, plain_last)
    writes = {data_node_physical(last): sealed[:-16]}
    group = last // ATTACHED_DATA_NODES
    entry = (last % ATTACHED_DATA_NODES) * CRYPTO_ENTRY_SIZE
    child_entry = (entry, node_key + sealed[-16:])
    m = group
    while True:  # each MHT node on the path holds its child's key and tag; its own go to its parent
        mht_plain = bytearray(NODE_SIZE)
        mht_plain[child_entry[0] : child_entry[0] + CRYPTO_ENTRY_SIZE] = child_entry[1]
        mht_key = os.urandom(KEY_SIZE)
        mht_sealed = gcm_encrypt(mht_key, bytes(mht_plain))
        writes[mht_node_physical(m)] = mht_sealed[:-16]
        if m == 0:
            root = mht_key + mht_sealed[-16:]
            break
        parent, index = mht_parent(m)
        child_entry = (MHT_OFF_CHILDREN + index * CRYPTO_ENTRY_SIZE, mht_key + mht_sealed[-16:])
        m = parent
    data = bytearray(pf.encrypt_bytes(b"x" * 5000, key, bound_path="m")[:NODE_SIZE])

    def change(header: bytearray) -> None:
        SIZE_STRUCT.pack_into(header, HDR_OFF_SIZE, HUGE)
        header[HDR_OFF_ROOT_KEY : HDR_OFF_ROOT_KEY + KEY_SIZE] = root[:KEY_SIZE]
        header[HDR_OFF_ROOT_MAC : HDR_OFF_ROOT_MAC + 16] = root[KEY_SIZE:]

    _rewrite_header(data, key, change)
    path = tmp_path / "forged.pf"
    with path.open("wb") as f:
        f.write(data)
        for node, ciphertext in writes.items():
            f.seek(node * NODE_SIZE)
            f.write(ciphertext)
        f.truncate(host_size(HUGE))
    with pf.open_protected(path, key, bound_path="m") as reader:
        reader.seek(HUGE - 10)
        assert reader.read(10) == b"L" * 10  # the forgery is genuine where it was written
    with pytest.raises(pf.TooLargeError, match="does not fit in memory"):
        pf.read_protected(path, key, bound_path="m")


def test_f5_read_is_bounded_by_the_file(tmp_path: Path) -> None:
    """read(n) with a huge n allocates what the file holds, not n."""
    key = pf.WrapKey.generate()
    path = tmp_path / "small.pf"
    path.write_bytes(pf.encrypt_bytes(b"abc", key, bound_path="m"))
    with pf.open_protected(path, key, bound_path="m") as reader:
        assert reader.read(1 << 50) == b"abc"
