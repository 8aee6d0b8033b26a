"""The secrets a server releases (read strictly from files) and the per-address rate limiter."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from confserve.files import NotRegularFileError, open_input
from confserve.provisioning._errors import ConfigError, ProtocolError
from confserve.provisioning._protocol import MAX_SECRET_BYTES, check_secret_name

__all__ = ["RateLimiter", "SecretStore", "parse_secret_spec", "read_secret_file"]


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read a secret file: a regular file (no symlink), not accessible by group or others, 1..64 KiB.

    Errors name the file and the problem, never its content.
    """
    shown = os.fspath(path)
    try:
        handle = open_input(path, follow_symlinks=False)  # never waits on a FIFO
    except NotRegularFileError:
        raise ConfigError(f"secret file {shown!r} is not a regular file") from None
    except OSError as exc:
        raise ConfigError(f"cannot open secret file {shown!r}: {exc.strerror}") from None
    fd = handle.fileno()
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"secret file {shown!r} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"secret file {shown!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}; use 0600 or 0400)"
            )
        if not 1 <= info.st_size <= MAX_SECRET_BYTES:
            raise ConfigError(f"secret file {shown!r} must hold 1..{MAX_SECRET_BYTES} bytes")
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {shown!r}: {exc.strerror}") from None
    finally:
        handle.close()
    data = b"".join(chunks)
    if not 1 <= len(data) <= MAX_SECRET_BYTES:
        raise ConfigError(f"secret file {shown!r} changed size while being read")
    return data


def parse_secret_spec(spec: str) -> tuple[str, Path]:
    """`NAME=FILE` as given on the command line."""
    name, sep, path = spec.partition("=")
    if not sep or not path:
        raise ConfigError(f"secret must be given as NAME=FILE, got {spec!r}")
    try:
        check_secret_name(name)
    except ProtocolError:
        raise ConfigError(f"invalid secret name {name!r}") from None
    return name, Path(path)


class SecretStore:
    """Named secrets held in memory. `repr` shows names and sizes only."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        for name, value in secrets.items():
            try:
                check_secret_name(name)
            except ProtocolError:
                raise ConfigError(f"invalid secret name {name!r}") from None
            if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_SECRET_BYTES:
                raise ConfigError(f"secret {name!r} must be 1..{MAX_SECRET_BYTES} bytes")
        self._secrets = dict(secrets)

    @classmethod
    def from_files(cls, specs: Iterable[tuple[str, Path]]) -> SecretStore:
        secrets: dict[str, bytes] = {}
        for name, path in specs:
            if name in secrets:
                raise ConfigError(f"secret {name!r} given twice")
            secrets[name] = read_secret_file(path)
        return cls(secrets)

    def names(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def get(self, name: str) -> bytes | None:
        return self._secrets.get(name)

    def __repr__(self) -> str:
        return "SecretStore(" + ", ".join(f"{n}: {len(v)} bytes" for n, v in self._secrets.items()) + ")"


class RateLimiter:
    """Token bucket per peer address: `burst` connections at once, refilled at `per_second`.

    The table of addresses is bounded (`max_addresses`, least recently seen evicted), so a flood of
    source addresses cannot grow memory. `per_second <= 0` disables the limit.
    """

    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        max_addresses: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or max_addresses < 1:
            raise ConfigError("rate-limit burst and address table size must be positive")
        self._rate = per_second
        self._burst = float(burst)
        self._max = max_addresses
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, address: str) -> bool:
        if self._rate <= 0:
            return True
        now = self._monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(address, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[address] = (tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return allowed
