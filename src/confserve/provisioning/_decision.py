"""The key service's decision for one session, without I/O: evidence -> policy -> grant or refuse -> record.

Theory of operation
-------------------
The server's I/O layer (`_server`, `_admission`) reads a session off the network and hands this module
what it observed, already parsed (`SessionFacts`): the certificates the client presented, and either its
request or why no valid request arrived. `decide` returns an `Outcome`, a value that says everything the
I/O layer then does:

| field                  | used for                                                                  |
|------------------------|---------------------------------------------------------------------------|
| `released`             | the secret names to send (empty when refused)                             |
| `floors`, `max_lease_seconds` | version 2: each requested model's floor, the policy's lease bound  |
| `category`             | the refusal category (`REFUSAL_CATEGORIES`, the refusals metric's label)  |
| `peer_reason`          | the short generic reason an extension client is told                      |
| `detail`               | the exact reason, for the audit log and the server log (never to the peer)|
| `audit_record`         | the audit entry, or None when the peer was not authenticated              |
| `unexpected`           | an exception a verifier raised unexpectedly (logged with its traceback)   |

Order, as the server applies it (nothing secret is sent unless every step passes):

1. the client must have sent exactly one certificate;
2. `verify_ratls_certificate`: key type, self-signature, the quote's binding to the key, then DCAP
   verification of the quote against the trust root and collateral at `now` (the server's clock, passed
   in); an unexpected exception fails closed as `internal`;
3. `Policy.evaluate` on the verified evidence;
4. a request that did not arrive, or was malformed, refuses the session (`timeout`, `protocol`); its
   category wins over 1-3, as the peer's own failure;
5. every requested name (none: every granted name) must be granted and loaded. A version 2 request (a
   replica renewing its lease) gets the requested names that are granted and loaded, and is refused only
   if none is; it also gets the policy's floor of each model it named and the policy's lease bound.

Authenticated or not: a session is *authenticated* when step 2 passed, i.e. the quote verified and is bound
to the key that completed the TLS handshake. Only authenticated sessions get an audit entry of their own
(granted or refused: policy, not_granted, protocol, timeout, ...). Anyone can complete a handshake with a
self-signed certificate, so refusals of unauthenticated peers are counted by `RefusalTally` and written as
one summary entry per interval: the audit log then grows with the decisions about real enclaves, not with
the number of connections an anonymous peer makes (docs/secret-provisioning.md, "Audit log").

`RefusalTally` does the same for the server log: the first refusal of each kind in an interval is logged
on its own line, the rest are counted and summarised once per interval.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography import x509

from confserve.attestation import (
    AttestationError,
    CollateralSource,
    Decision,
    Policy,
    TrustConfig,
    VerifiedEvidence,
    verify,
    verify_ratls_certificate,
)
from confserve.provisioning._protocol import RequestKind, SecretRequest
from confserve.provisioning._secrets import SecretStore

__all__ = [
    "REFUSAL_CATEGORIES",
    "Outcome",
    "ReadFailure",
    "RefusalSummary",
    "RefusalTally",
    "Runtime",
    "SessionFacts",
    "TallyKind",
    "audit_failed",
    "decide",
    "iso_time",
]

# Refusal categories: the bounded label set of the refusals metric (the audit log has the details).
REFUSAL_CATEGORIES: Final = (
    "certificate",  # not exactly one client certificate
    "attestation",  # RA-TLS or DCAP verification failed
    "policy",  # verified, but the policy refuses the identity / TCB / debug / simulation
    "not_granted",  # a requested name is not granted to this identity
    "unavailable",  # a granted name has no secret loaded
    "protocol",  # malformed, oversized or truncated request
    "timeout",  # the client did not send its request in time, or went away
    "audit",  # the decision could not be written to the audit log
    "internal",  # an unexpected error (refused, fail closed)
)

# What the peer is told, per category (short and generic; the detail stays in the logs).
_PEER_REASONS: Final[Mapping[str, str]] = {
    "certificate": "attestation failed",
    "attestation": "attestation failed",
    "policy": "refused by policy",
    "not_granted": "secret not granted",
    "unavailable": "secret not available",
    "protocol": "protocol error",
    "timeout": "timed out",
    "audit": "internal error",
    "internal": "attestation failed",
}


@dataclass(frozen=True, slots=True)
class Runtime:
    """The configuration one session is decided with: swapped as a whole on reload."""

    policy: Policy
    secrets: SecretStore
    collateral: CollateralSource


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """Why no valid request was read: `protocol` (malformed, oversized, truncated) or `timeout` (the
    client sent nothing in time, went away, or broke the TLS record layer)."""

    category: Literal["protocol", "timeout"]
    detail: str

    @classmethod
    def protocol(cls, error: object) -> ReadFailure:
        return cls("protocol", f"protocol error: {error}")

    @classmethod
    def timeout(cls, error: object) -> ReadFailure:
        return cls("timeout", f"no request: {error}")


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the I/O layer observed about one session that completed its TLS handshake."""

    peer: str  # "address:port"
    certificates: tuple[x509.Certificate, ...]  # as the client sent them, leaf first
    request: SecretRequest | ReadFailure


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision for one session (see the module docstring's table)."""

    released: tuple[str, ...] = ()
    floors: tuple[tuple[str, int], ...] = ()  # version 2: (model, floor) in request order
    max_lease_seconds: int = 0  # version 2: the policy's lease bound (0: none)
    category: str | None = None  # None when released
    detail: str = ""
    peer_reason: str = ""
    evidence: VerifiedEvidence | None = None
    decision: Decision | None = None
    request: SecretRequest | None = None
    audit_record: dict[str, Any] | None = None
    unexpected: BaseException | None = None

    @property
    def granted(self) -> bool:
        return self.category is None

    @property
    def authenticated(self) -> bool:
        """The quote verified and is bound to the TLS key: this session gets its own audit entry."""
        return self.evidence is not None

    def log_message(self, peer: str) -> str:
        """The server log's line for this session (names, identities and reasons; never secret bytes)."""
        if self.granted:
            described = self.decision.describe() if self.decision is not None else "no decision"
            return f"released {', '.join(self.released)} to {peer} ({described})"
        return f"refused {peer}: {self.detail}"


def iso_time(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verify(
    certificates: tuple[x509.Certificate, ...], runtime: Runtime, trust: TrustConfig, now: int
) -> tuple[VerifiedEvidence | None, str | None, str, BaseException | None]:
    """(evidence, failure category, failure detail, unexpected exception)."""
    if len(certificates) != 1:
        detail = f"client sent {len(certificates)} certificates; exactly one RA-TLS certificate is required"
        return None, "certificate", detail, None

    def verify_quote(quote: bytes) -> VerifiedEvidence:
        return verify(quote, runtime.collateral.get(quote, now), trust, now)

    try:
        return verify_ratls_certificate(certificates[0], verify_quote), None, "", None
    except AttestationError as exc:
        return None, "attestation", f"attestation failed: {exc}", None
    except Exception as exc:  # fail closed on anything unexpected in the verifiers
        return None, "internal", f"verification error: {type(exc).__name__}", exc


def _names_refusal(
    request: SecretRequest, decision: Decision, secrets: SecretStore
) -> tuple[str, str] | None:
    granted = decision.secrets
    for name in request.names or granted:
        if name not in granted:
            return "not_granted", f"secret {name!r} not granted by rule {decision.rule!r}"
        if secrets.get(name) is None:  # the server checks the policy against the loaded secrets at (re)load
            return "unavailable", f"secret {name!r} not loaded"
    return None


def _lease_names(
    request: SecretRequest, decision: Decision, secrets: SecretStore
) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """Version 2: the requested names granted and loaded, in request order, or why none is."""
    wanted = request.names or decision.secrets
    released = tuple(n for n in wanted if n in decision.secrets and secrets.get(n) is not None)
    if released:
        return released, None
    if any(n in decision.secrets for n in wanted):
        return (), ("unavailable", "no requested secret is loaded")
    return (), ("not_granted", f"no requested secret is granted by rule {decision.rule!r}")


def decide(facts: SessionFacts, runtime: Runtime, trust: TrustConfig, now: int) -> Outcome:
    """The decision for one session at Unix time `now` (the verification time and the audit timestamp)."""
    evidence, category, detail, unexpected = _verify(facts.certificates, runtime, trust, now)
    decision: Decision | None = None
    if evidence is not None:
        decision = runtime.policy.evaluate(evidence)
        if not decision.accepted:
            category, detail = "policy", f"policy: {decision.reason}"
    request = facts.request if isinstance(facts.request, SecretRequest) else None
    if isinstance(facts.request, ReadFailure):  # the peer's own failure is named first
        category, detail = facts.request.category, facts.request.detail
    released: tuple[str, ...] = ()
    floors: tuple[tuple[str, int], ...] = ()
    max_lease = 0
    if category is None:
        assert request is not None
        assert decision is not None
        assert decision.accepted
        if request.kind is RequestKind.LEASE:
            released, refusal = _lease_names(request, decision, runtime.secrets)
            floors = tuple((model, runtime.policy.floor(model)) for model in request.models)
            max_lease = runtime.policy.max_lease_seconds or 0
        else:
            refusal = _names_refusal(request, decision, runtime.secrets)
            released = request.names or decision.secrets
        if refusal is not None:
            category, detail = refusal
            released, floors, max_lease = (), (), 0
    outcome = Outcome(
        released=released,
        floors=floors,
        max_lease_seconds=max_lease,
        category=category,
        detail=detail,
        peer_reason=_PEER_REASONS[category] if category is not None else "",
        evidence=evidence,
        decision=decision,
        request=request,
        unexpected=unexpected,
    )
    if evidence is None:
        return outcome
    return _with_record(outcome, facts.peer, now)


def _with_record(outcome: Outcome, peer: str, now: int) -> Outcome:
    evidence = outcome.evidence
    assert evidence is not None
    request = outcome.request
    ident = evidence.identity
    record: dict[str, Any] = {
        "kind": "session",
        "time": iso_time(now),
        "peer": peer,
        "protocol": request.kind.value if request is not None else None,
        "requested": list(request.names) if request is not None else None,
        "outcome": "released" if outcome.granted else "refused",
        "identity": {
            "mr_enclave": ident.mr_enclave.hex(),
            "mr_signer": ident.mr_signer.hex(),
            "isv_prod_id": ident.isv_prod_id,
            "isv_svn": ident.isv_svn,
        },
        "tcb_status": evidence.tcb_status,
        "advisory_ids": list(evidence.advisory_ids),
        "simulated": evidence.simulated,
        "debug": evidence.debug,
    }
    if outcome.decision is not None and outcome.decision.rule is not None:
        record["rule"] = outcome.decision.rule
    if request is not None and request.kind is RequestKind.LEASE:
        record["models"] = list(request.models)
    if outcome.granted:
        record["secrets"] = list(outcome.released)
        if request is not None and request.kind is RequestKind.LEASE:
            record["withheld"] = [n for n in request.names if n not in outcome.released]
            record["floors"] = dict(outcome.floors)
            record["max_lease_seconds"] = outcome.max_lease_seconds
    else:
        record["reason"] = outcome.detail
        record["category"] = outcome.category
    return dataclasses.replace(outcome, audit_record=record)


def audit_failed(outcome: Outcome) -> Outcome:
    """The audit entry could not be written: refuse (fail closed), whatever had been decided."""
    return Outcome(
        category="audit",
        detail="audit log unavailable",
        peer_reason=_PEER_REASONS["audit"],
        evidence=outcome.evidence,
        decision=outcome.decision,
        request=outcome.request,
    )


# -- refusals of unauthenticated peers, counted ---------------------------------------------------------

TallyKind = Literal["connection", "handshake", "session"]
_OTHER: Final = "(other)"


@dataclass(frozen=True, slots=True)
class RefusalSummary:
    """Refusals of unauthenticated peers between `since` and `until` (Unix seconds)."""

    since: int
    until: int
    counts: dict[str, dict[str, int]]  # kind -> reason -> count
    peers: dict[str, int]  # the addresses refused most often (bounded; the rest under "(other)")
    details: dict[str, int]  # the most frequent exact reasons (bounded; the rest under "(other)")

    @property
    def total(self) -> int:
        return sum(n for reasons in self.counts.values() for n in reasons.values())

    def audit_record(self) -> dict[str, Any]:
        return {
            "kind": "unauthenticated_summary",
            "time": iso_time(self.until),
            "since": iso_time(self.since),
            "outcome": "refused",
            "total": self.total,
            "counts": self.counts,
            "peers": self.peers,
            "details": self.details,
        }

    def log_message(self) -> str:
        counts = ", ".join(
            f"{kind} {reason}: {n}" for kind, reasons in self.counts.items() for reason, n in reasons.items()
        )
        peers = ", ".join(f"{address} ({n})" for address, n in self.peers.items())
        return (
            f"refused {self.total} unauthenticated connections since {iso_time(self.since)}: {counts}; "
            f"peers: {peers}"
        )


class RefusalTally:
    """Counts refusals of unauthenticated peers; one summary per `interval_seconds` (thread-safe).

    `add` says whether this is the first refusal of its kind and reason since the last summary (the caller
    logs that one on its own line). Memory is bounded: at most `max_keys` distinct addresses and distinct
    reasons are kept by name, the rest are counted under "(other)".
    """

    def __init__(self, interval_seconds: float, *, max_keys: int = 16) -> None:
        if interval_seconds <= 0 or max_keys < 1:
            raise ValueError("interval_seconds and max_keys must be positive")
        self._interval = interval_seconds
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._reset(None)

    def _reset(self, since: int | None) -> None:
        self._since = since
        self._counts: dict[str, Counter[str]] = {}
        self._peers: Counter[str] = Counter()
        self._details: Counter[str] = Counter()

    def _bump(self, counter: Counter[str], key: str) -> None:
        if key in counter or len(counter) < self._max_keys:
            counter[key] += 1
        else:
            counter[_OTHER] += 1

    def add(self, kind: TallyKind, reason: str, address: str, detail: str, now: int) -> bool:
        with self._lock:
            if self._since is None:
                self._since = now
            reasons = self._counts.setdefault(kind, Counter())
            first = reason not in reasons
            reasons[reason] += 1
            self._bump(self._peers, address)
            self._bump(self._details, detail)
            return first

    def take(self, now: int, *, force: bool = False) -> RefusalSummary | None:
        """The summary when an interval has passed since the first refusal counted (or `force`), else None."""
        with self._lock:
            if self._since is None or (not force and now - self._since < self._interval):
                return None
            summary = RefusalSummary(
                since=self._since,
                until=now,
                counts={kind: dict(sorted(c.items())) for kind, c in sorted(self._counts.items())},
                peers=dict(self._peers.most_common()),
                details=dict(self._details.most_common()),
            )
            self._reset(None)
            return summary
