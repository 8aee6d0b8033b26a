"""confserve.files: only regular files are opened, FIFOs never block, sizes are bounded."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from confserve.files import (
    FileTooLargeError,
    NotRegularFileError,
    open_input,
    read_input,
    read_input_text,
)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(os.fspath(path))
        yield path


def _refused(path: Path, kind: str) -> None:
    """open_input refuses at once (a FIFO without a writer must not block: run it on a thread)."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_input(path).close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert outcome, f"open_input({path}) blocked"
    error = outcome[0]
    assert isinstance(error, NotRegularFileError)
    assert isinstance(error, OSError)
    assert error.errno == errno.EINVAL
    assert error.filename == os.fspath(path)
    assert str(error) == f"{path}: {kind}, not a regular file"


def test_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    with open_input(path) as handle:
        assert handle.read() == b"hello"
        assert os.get_blocking(handle.fileno())  # blocking again after the open
    assert read_input(path) == b"hello"
    assert read_input(path, max_bytes=5) == b"hello"
    assert read_input_text(path) == "hello"


def test_symlinks_followed_unless_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    assert read_input(tmp_path / "link") == b"x"
    with pytest.raises(OSError, match="Too many levels of symbolic links") as info:
        open_input(tmp_path / "link", follow_symlinks=False)
    assert not isinstance(info.value, NotRegularFileError)


def test_fifo_refused_without_blocking(fifo: Path) -> None:
    _refused(fifo, "a FIFO")


def test_directory_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "a directory")


def test_socket_refused(unix_socket: Path) -> None:
    _refused(unix_socket, "a socket")


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_character_device_refused(device: str) -> None:
    _refused(Path(device), "a character device")


def test_missing_file_is_the_usual_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_input(tmp_path / "nope")


def test_size_bound_from_stat(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"123456")
    with pytest.raises(FileTooLargeError) as info:
        read_input(path, max_bytes=5)
    assert info.value.errno == errno.EFBIG
    assert info.value.max_bytes == 5
    assert str(info.value) == f"{path}: file too large (more than 5 bytes)"
    with pytest.raises(FileTooLargeError):
        open_input(path, max_bytes=5)


def test_size_bound_holds_while_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grows after the fstat check is still cut off at the bound."""
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    real_fstat = os.fstat

    def fstat_then_grow(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        with path.open("ab") as grow:
            grow.write(b"67890")
        return result

    monkeypatch.setattr(os, "fstat", fstat_then_grow)
    with pytest.raises(FileTooLargeError):
        read_input(path, max_bytes=7)


def test_large_file_read_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert read_input(path, max_bytes=len(data)) == data
    with pytest.raises(FileTooLargeError):
        read_input(path, max_bytes=len(data) - 1)


def test_text_decoding_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\xff")
    with pytest.raises(UnicodeDecodeError):
        read_input_text(path)
