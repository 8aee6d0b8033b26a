"""Mutation fuzzing of Gramine protected files: bit flips, truncations, extensions, node swaps and splices,
header fields. A mutated file never decrypts to anything but its own plaintext, and only when the change
is in bytes the format leaves unauthenticated (the metadata node's padding after the encrypted header);
every failure is a `PfError`, never another exception (F5: never a MemoryError)."""

from __future__ import annotations

import io
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from confserve import pf
from confserve.pf._format import ENCRYPTED_HEADER_OFFSET, HEADER_SIZE, NODE_SIZE, OFF_FLAGS_V2
from confserve.pf._reader import read_header_facts
from tests.adversarial._fuzz import Budget, Mutation, mutate, rng_for

BOUND = "models/m/1/variables/variables.data-00000-of-00001"
# 0 and 1 byte, all in the header, one data node, exactly one group, two groups (a second MHT node).
SIZES = (0, 1, 3072, 3073, 3072 + 96 * 4096, 3072 + 97 * 4096 + 5)
# Plain header fields (docs/formats.md#pf-metadata-node): magic, versions, KDF nonce, header tag, v2 flags.
HEADER_FIELDS = ((0, 8), (8, 9), (9, 10), (10, 42), (42, 58), (58, 59))


@dataclass(frozen=True)
class Sample:
    plaintext: bytes
    data: bytes
    version: int

    @property
    def unauthenticated(self) -> tuple[int, int]:
        """The metadata node's padding after the encrypted header: never read (docs/threat-model.md)."""
        return ENCRYPTED_HEADER_OFFSET[self.version] + HEADER_SIZE, NODE_SIZE


@pytest.fixture(scope="module")
def key() -> pf.WrapKey:
    return pf.WrapKey(bytes(range(16)))


@pytest.fixture(scope="module")
def corpus(key: pf.WrapKey) -> list[Sample]:
    rng = random.Random("pf-corpus")
    samples = []
    for version in (pf.FORMAT_V1, pf.FORMAT_V2):
        for size in SIZES:
            plaintext = rng.randbytes(size)
            data = pf.encrypt_bytes(plaintext, key, bound_path=BOUND, format_version=version)
            samples.append(Sample(plaintext, data, version))
    return samples


def _targeted(sample: Sample, corpus: list[Sample], rng: random.Random) -> Mutation:
    """Mutations a random byte flip rarely makes: a header field set to a chosen value, or a node of
    another file (same key, same bound path) spliced in at the same position."""
    data = sample.data
    if rng.random() < 0.5:
        start, end = rng.choice(HEADER_FIELDS)
        out = bytearray(data)
        out[start:end] = bytes(rng.choice((0, 1, 2, 3, 0xFF)) for _ in range(end - start))
        if bytes(out) == data:
            out[start] ^= 0x01
        return Mutation(bytes(out), f"header field {start}..{end}", (start, end), original_length=len(data))
    # A one-node file spliced with another one-node file IS that other file (a whole-file replacement,
    # the documented rollback case), so the donor must differ elsewhere too.
    while True:
        donor = rng.choice([other for other in corpus if other is not sample])
        node = rng.randrange(min(len(data), len(donor.data)) // NODE_SIZE)
        out = bytearray(data)
        out[node * NODE_SIZE : (node + 1) * NODE_SIZE] = donor.data[node * NODE_SIZE : (node + 1) * NODE_SIZE]
        if bytes(out) not in (data, donor.data):
            break
    span = (node * NODE_SIZE, (node + 1) * NODE_SIZE)
    return Mutation(bytes(out), f"node {node} from another file", span, original_length=len(data))


def _check_whole(sample: Sample, mutation: Mutation, key: pf.WrapKey, outcomes: Counter[str]) -> str | None:
    """None if the outcome is allowed, else what went wrong; `outcomes` counts what happened."""
    try:
        plain = pf.decrypt_bytes(mutation.data, key, bound_path=BOUND)
    except pf.PfError as exc:
        outcomes[type(exc).__name__] += 1
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    outcomes["accepted (padding only)"] += 1
    if bytes(plain) != sample.plaintext:
        return "ACCEPTED with different plaintext"
    if not mutation.within(*sample.unauthenticated):
        return "ACCEPTED a change to authenticated bytes"
    return None


def _check_partial(
    sample: Sample, mutation: Mutation, key: pf.WrapKey, rng: random.Random, corpus: list[Sample]
) -> str | None:
    """Random seeks and reads of the streaming reader: every byte it returns is genuine, the original's
    or (when the metadata node of another genuine file for the same key and path was spliced in) that
    file's: nodes are authenticated lazily, so a partial read checks only what it reads."""
    try:
        reader = pf.ProtectedFileReader(io.BytesIO(mutation.data), key, bound_path=BOUND)
    except pf.PfError:
        return None
    except Exception as exc:
        return f"open: {type(exc).__name__}: {exc}"
    with reader:
        for _ in range(4):
            pos = rng.randrange(max(1, len(sample.plaintext) + 2))
            size = rng.choice((1, 100, 4096, 5000, 1 << 20))
            try:
                reader.seek(pos)
                got = reader.read(size)
            except pf.PfError:
                continue
            except Exception as exc:
                return f"read: {type(exc).__name__}: {exc}"
            if all(got != genuine.plaintext[pos : pos + size] for genuine in corpus):
                return f"read at {pos} returned bytes of no genuine file"
    return None


def test_mutated_protected_files_never_verify(corpus: list[Sample], key: pf.WrapKey, budget: Budget) -> None:
    rng = rng_for("pf", 1)
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    cases = budget.cases(5000, 200000)
    for case in range(cases):
        sample = rng.choice(corpus)
        mutation = (
            _targeted(sample, corpus, rng)
            if rng.random() < 0.3
            else mutate(sample.data, rng, block=NODE_SIZE)
        )
        problem = _check_whole(sample, mutation, key, outcomes) or _check_partial(
            sample, mutation, key, rng, corpus
        )
        try:
            read_header_facts(io.BytesIO(mutation.data))
        except pf.FormatError:
            pass
        except Exception as exc:
            problem = problem or f"header facts: {type(exc).__name__}: {exc}"
        if problem is not None:
            where = f"v{sample.version}, {len(sample.plaintext)} B, {mutation.description}"
            failures.append(f"case {case} ({where}): {problem}")
    print(f"pf fuzz: {cases} cases, outcomes {dict(outcomes)}")
    assert failures == [], "\n".join(failures[:20])
    assert sum(outcomes.values()) == cases


def test_padding_after_the_header_is_the_only_unauthenticated_part(
    corpus: list[Sample], key: pf.WrapKey
) -> None:
    """The documented exception, shown directly: the padding changes nothing; the v2 flags byte does."""
    for sample in corpus:
        start, end = sample.unauthenticated
        out = bytearray(sample.data)
        out[start:end] = bytes(0xA5 for _ in range(end - start))
        assert bytes(pf.decrypt_bytes(bytes(out), key, bound_path=BOUND)) == sample.plaintext
        out = bytearray(sample.data)
        out[start - 1] ^= 0x01  # the last byte of the encrypted header
        with pytest.raises(pf.IntegrityError):
            pf.decrypt_bytes(bytes(out), key, bound_path=BOUND)
        if sample.version == pf.FORMAT_V2:
            out = bytearray(sample.data)
            out[OFF_FLAGS_V2] = 0x02
            with pytest.raises(pf.FormatError, match="unknown feature flags"):
                pf.decrypt_bytes(bytes(out), key, bound_path=BOUND)


def test_wrong_key_and_wrong_path_are_refused(corpus: list[Sample], key: pf.WrapKey) -> None:
    other = pf.WrapKey(bytes(range(1, 17)))
    for sample in corpus:
        with pytest.raises(pf.IntegrityError):
            pf.decrypt_bytes(sample.data, other, bound_path=BOUND)
        with pytest.raises(pf.PathMismatchError):
            pf.decrypt_bytes(sample.data, key, bound_path=BOUND + ".swapped")
