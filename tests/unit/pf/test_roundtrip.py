"""Round trips through the streaming writer and reader: sizes, chunkings, seeks, both versions."""

from __future__ import annotations

import io
import os
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confserve import pf

KEY = pf.WrapKey(bytes(range(16)))

# Interesting sizes: around the inline 3 KiB, the first data node, a full first group (96 nodes), and a
# file needing a second level of MHT nodes (more than 33 groups).
EDGE_SIZES = [
    0,
    1,
    3071,
    3072,
    3073,
    7168,
    7169,
    3072 + 96 * 4096,
    3072 + 96 * 4096 + 1,
    3072 + 34 * 96 * 4096 + 77,
]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", EDGE_SIZES)
def test_edge_sizes_round_trip(version: int, size: int) -> None:
    data = os.urandom(size)
    blob = pf.encrypt_bytes(data, KEY, bound_path="a/b.bin", format_version=version)
    assert len(blob) == pf.host_size(size)
    assert pf.decrypt_bytes(blob, KEY, bound_path="a/b.bin") == data


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=20_000) | st.integers(0, 900_000).map(os.urandom),
    version=st.sampled_from([1, 2]),
    chunk=st.integers(1, 70_000),
)
def test_random_contents_and_chunkings_round_trip(data: bytes, version: int, chunk: int) -> None:
    out = io.BytesIO()
    with pf.ProtectedFileWriter(out, KEY, bound_path="p", format_version=version) as w:
        for i in range(0, len(data), chunk):
            assert w.write(data[i : i + chunk]) == len(data[i : i + chunk])
    reader = pf.ProtectedFileReader(io.BytesIO(out.getvalue()), KEY, bound_path="p")
    got = bytearray()
    while piece := reader.read(chunk):
        got += piece
    assert got == data
    assert reader.read() == b""


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_access_reads(data: st.DataObject) -> None:
    size = data.draw(st.integers(0, 3072 + 200 * 4096))
    plain = os.urandom(size)
    reader = pf.ProtectedFileReader(
        io.BytesIO(pf.encrypt_bytes(plain, KEY, bound_path="p")), KEY, bound_path="p"
    )
    for _ in range(8):
        pos = data.draw(st.integers(0, size + 10))
        n = data.draw(st.integers(0, 3 * 4096 + 5))
        assert reader.seek(pos) == pos
        assert reader.read(n) == plain[pos : pos + n]
        assert reader.tell() == pos + len(plain[pos : pos + n])


def test_seek_whence_and_errors() -> None:
    plain = os.urandom(10_000)
    reader = pf.ProtectedFileReader(
        io.BytesIO(pf.encrypt_bytes(plain, KEY, bound_path="p")), KEY, bound_path="p"
    )
    assert reader.seekable()
    assert reader.readable()
    assert reader.seek(-10, io.SEEK_END) == 9990
    assert reader.read() == plain[-10:]
    reader.seek(100)
    assert reader.seek(5, io.SEEK_CUR) == 105
    with pytest.raises(ValueError, match="negative"):
        reader.seek(-1)
    with pytest.raises(ValueError, match="whence"):
        reader.seek(0, 7)
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(1)


def test_writer_lifecycle() -> None:
    out = io.BytesIO()
    w = pf.ProtectedFileWriter(out, KEY, bound_path="p")
    w.write(b"abc")
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x")
    with pytest.raises(pf.PfError, match="version"):
        pf.ProtectedFileWriter(io.BytesIO(), KEY, bound_path="p", format_version=3)


def test_exception_inside_writer_aborts_without_a_header() -> None:
    out = io.BytesIO()

    def produce() -> None:
        with pf.ProtectedFileWriter(out, KEY, bound_path="p") as w:
            w.write(os.urandom(500_000))
            raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        produce()
    assert out.getvalue()[:8] != b"GRAFS_PF"  # never finalised, so never mistaken for a whole file
    with pytest.raises(pf.FormatError):
        pf.decrypt_bytes(out.getvalue(), KEY, bound_path="p")


def _stream(total: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    block = os.urandom(chunk)
    for _ in range(total // chunk):
        yield block


@pytest.mark.slow
def test_streaming_memory_is_bounded(tmp_path: os.PathLike[str]) -> None:
    """Peak Python allocations while streaming 64 MiB through writer and reader stay far below the size."""
    path = os.path.join(tmp_path, "big.pf")
    tracemalloc.start()
    try:
        with open(path, "w+b") as f, pf.ProtectedFileWriter(f, KEY, bound_path="big") as w:
            for block in _stream(64 << 20):
                w.write(block)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with pf.open_protected(path, KEY, bound_path="big") as reader:
            buf = bytearray(1 << 20)
            total = 0
            while n := reader.readinto(buf):
                total += n
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 64 << 20
    assert write_peak < 6 << 20, write_peak
    assert read_peak < 6 << 20, read_peak
