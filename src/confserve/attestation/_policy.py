"""Attestation policy: is this verified evidence acceptable, and which secrets may it receive?

Theory of operation
-------------------
Verification (signatures, chains, collateral) happens elsewhere and yields a `VerifiedEvidence`. This
module only decides. A `Policy` is a frozen value built from one of two file formats, both parsed
strictly (unknown keys, wrong types, bad hex and oversized files are `PolicyError`):

* the **native TOML** format (`parse_policy_toml`), documented in docs/policy.md;
* the reference deployment's **`ra_config.json`** (`parse_ra_config`), kept byte-for-byte compatible.

`Policy.evaluate` applies the checks in a fixed order and returns a `Decision`; it never raises, and any
unexpected condition refuses (fail closed):

1. deny list: an `mr_enclave` or `mr_signer` on it is refused, whatever else the policy says;
2. simulated evidence is refused unless `allow_simulated`;
3. a DEBUG enclave is refused unless `allow_debug` (its memory is readable by the host);
4. the TCB status must be in `allowed_tcb_statuses` (`Revoked` never is);
5. every advisory ID of the evidence must be in `allowed_advisory_ids`;
6. the first allow rule (in file order) whose every present field matches grants its secrets.

An allow rule matches when each of its present fields matches: `mr_enclave` and `mr_signer` are equal,
`isv_prod_id` is equal, `min_isv_svn` is `<=` the evidence's ISVSVN, and `exact_isv_svn` (only produced
from ra_config.json) is equal. A rule with no field matches every enclave; only ra_config.json with all
four switches "off" produces one.

ra_config.json semantics (the reference's `ra_utils.h`; docs/policy.md)
-------------------------------------------------------------------------------
* Four switches `verify_mr_enclave`, `verify_mr_signer`, `verify_isv_prod_id`, `verify_isv_svn`.
* If all four are "off", any enclave is accepted (identity-wise; TCB, debug and simulated checks still
  apply here, unlike in the reference).
* Otherwise an enclave is accepted if **one single entry** of `mrs` matches on **every** enabled field.
* ISV_SVN is compared for **exact equality**, not as a minimum.

Deliberate differences (all fail closed): a switch must be exactly "on" or "off" (the reference takes any
string starting with "on"); every key must be present and valid (the reference dereferences NULL on a
missing key and turns bad hex into zeros); more than 100 `mrs` entries is an error (the reference silently
ignores the rest). `isv_prod_id` / `isv_svn` may be a decimal string (as in the reference) or a JSON integer.

Binding of `report_data` (to an RA-TLS key or a nonce) is the caller's check, not the policy's.

Refusal reasons are short, fixed phrases plus public measurement values (ISVSVN, ISVPRODID, TCB status,
advisory IDs); never a secret. `Decision.describe()` adds the evidence's full identity for logs.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confserve.attestation._errors import PolicyError
from confserve.attestation._types import SGX_TCB_STATUSES, EnclaveIdentity, VerifiedEvidence
from confserve.files import open_input

__all__ = [
    "KNOWN_TCB_STATUSES",
    "MAX_FLOOR",
    "MAX_LEASE_SECONDS",
    "MAX_POLICY_FILE_BYTES",
    "AllowRule",
    "Decision",
    "Policy",
    "load_policy_file",
    "parse_policy_toml",
    "parse_ra_config",
    "policy_for_identities",
    "render_policy_toml",
]

# A policy lists a few identities and names; the reference's ra_config.json holds at most 100 entries of
# ~250 bytes (25 KB). 1 MiB leaves ample room and bounds parser memory on hostile input.
MAX_POLICY_FILE_BYTES = 1 << 20

# RA_TLS_MRS_MAX_SIZE in the reference's ra_utils.h.
RA_CONFIG_MAX_ENTRIES = 100

# Limits on names; they end up in logs and (secret names) as keys of the key-release service.
_MAX_NAME_CHARS = 64
_MAX_LIST_ITEMS = 1000
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\[\]-]*")
_SECRET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ADVISORY_RE = re.compile(r"[A-Z0-9][A-Z0-9-]*")
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # as releases name models (confserve.releases)
MAX_FLOOR = 2**53 - 1  # release numbers are exact JSON numbers
MAX_LEASE_SECONDS = 2**32 - 1  # the key service's wire format carries a u32
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")
_DECIMAL_RE = re.compile(r"[0-9]{1,5}")

# The SGX TCB statuses a policy may allow (docs/attestation.md): all but `Revoked`, which the verifier
# treats as a hard error and which is never allowable here.
KNOWN_TCB_STATUSES = frozenset(SGX_TCB_STATUSES) - {"Revoked"}
_DEFAULT_TCB_STATUSES = frozenset({"UpToDate"})
DEFAULT_SECRET = "default"  # noqa: S105 (a secret *name*, not a secret)


# --------------------------------------------------------------------------------------------------
# Value types


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One allowed identity: every field that is not None must match the evidence."""

    name: str
    mr_enclave: bytes | None = None
    mr_signer: bytes | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    exact_isv_svn: int | None = None  # only from ra_config.json (reference semantics: equality)
    secrets: tuple[str, ...] = (DEFAULT_SECRET,)

    def __post_init__(self) -> None:
        _check_name(self.name, "rule name")
        for label, value in (("mr_enclave", self.mr_enclave), ("mr_signer", self.mr_signer)):
            if value is not None and not (isinstance(value, bytes) and len(value) == 32):
                raise PolicyError(f"rule {self.name!r}: {label} must be 32 bytes")
        for label, number in (
            ("isv_prod_id", self.isv_prod_id),
            ("min_isv_svn", self.min_isv_svn),
            ("exact_isv_svn", self.exact_isv_svn),
        ):
            if number is not None and not _is_u16(number):
                raise PolicyError(f"rule {self.name!r}: {label} must be an integer in 0..65535")
        if self.min_isv_svn is not None and self.exact_isv_svn is not None:
            raise PolicyError(f"rule {self.name!r}: min_isv_svn and exact_isv_svn are exclusive")
        secrets = tuple(self.secrets) if isinstance(self.secrets, (list, tuple)) else None
        if not secrets:
            raise PolicyError(f"rule {self.name!r}: secrets must be a non-empty list of names")
        for secret in secrets:
            _check_secret_name(secret)
        if len(set(secrets)) != len(secrets):
            raise PolicyError(f"rule {self.name!r}: duplicate secret name")
        object.__setattr__(self, "secrets", secrets)

    def mismatch(self, identity: EnclaveIdentity) -> tuple[int, str] | None:
        """None if the rule matches, else (how many present fields matched first, refusal reason)."""
        matched = 0
        if self.mr_enclave is not None:
            if identity.mr_enclave != self.mr_enclave:
                return matched, "mr_enclave not in allow list"
            matched += 1
        if self.mr_signer is not None:
            if identity.mr_signer != self.mr_signer:
                return matched, "mr_signer not in allow list"
            matched += 1
        if self.isv_prod_id is not None:
            if identity.isv_prod_id != self.isv_prod_id:
                expected = self.isv_prod_id
                return (
                    matched,
                    f"isv_prod_id {identity.isv_prod_id} does not match {expected} for rule {self.name!r}",
                )
            matched += 1
        if self.min_isv_svn is not None and identity.isv_svn < self.min_isv_svn:
            return (
                matched,
                f"isv_svn {identity.isv_svn} below minimum {self.min_isv_svn} for rule {self.name!r}",
            )
        if self.exact_isv_svn is not None and identity.isv_svn != self.exact_isv_svn:
            return matched, (
                f"isv_svn {identity.isv_svn} does not equal {self.exact_isv_svn} for rule {self.name!r}"
            )
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `Policy.evaluate`. `reason` is safe to show to the peer."""

    accepted: bool
    reason: str  # "accepted" or the exact refusal reason
    rule: str | None = None  # name of the allow rule that matched
    secrets: tuple[str, ...] = ()  # secret names granted (empty when refused)
    identity: EnclaveIdentity | None = None  # the evaluated identity, for logs (public values only)

    def describe(self) -> str:
        """One log line: outcome, rule, and the evidence's identity (public measurements only)."""
        outcome = f"accepted by rule {self.rule!r}" if self.accepted else f"refused: {self.reason}"
        if self.identity is None:
            return outcome
        ident = self.identity
        return (
            f"{outcome} (mr_enclave {ident.mr_enclave.hex()}, mr_signer {ident.mr_signer.hex()}, "
            f"isv_prod_id {ident.isv_prod_id}, isv_svn {ident.isv_svn})"
        )

    def require(self) -> tuple[str, ...]:
        """Return the granted secret names, or raise `PolicyError(reason)` if refused."""
        if not self.accepted:
            raise PolicyError(self.reason)
        return self.secrets


def _refuse(reason: str, identity: EnclaveIdentity | None = None) -> Decision:
    return Decision(accepted=False, reason=reason, identity=identity)


@dataclass(frozen=True, slots=True)
class Policy:
    """A frozen attestation policy. Build it directly or with `parse_policy_toml` / `parse_ra_config`."""

    rules: tuple[AllowRule, ...] = ()
    deny_mr_enclave: frozenset[bytes] = field(default_factory=frozenset)
    deny_mr_signer: frozenset[bytes] = field(default_factory=frozenset)
    allowed_tcb_statuses: frozenset[str] = _DEFAULT_TCB_STATUSES
    allowed_advisory_ids: frozenset[str] = field(default_factory=frozenset)
    allow_simulated: bool = False
    allow_debug: bool = False
    # Each model's lowest acceptable release (docs/releases.md): the key service hands them to replicas
    # with their keys. Sorted (model, floor) pairs; a mapping is accepted and sorted.
    floors: tuple[tuple[str, int], ...] | Mapping[str, int] = ()
    # The longest key lease a replica may hold before renewing (None: the replica's own setting).
    max_lease_seconds: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "floors", _checked_floors(self.floors))
        lease = self.max_lease_seconds
        if lease is not None and (type(lease) is not int or not 1 <= lease <= MAX_LEASE_SECONDS):
            raise PolicyError(f"max_lease_seconds must be an integer in 1..{MAX_LEASE_SECONDS}")
        rules = tuple(self.rules)
        if not all(isinstance(rule, AllowRule) for rule in rules):
            raise PolicyError("rules must be AllowRule values")
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise PolicyError("allow rule names must be unique")
        object.__setattr__(self, "rules", rules)
        for label in ("deny_mr_enclave", "deny_mr_signer"):
            values = frozenset(getattr(self, label))
            if not all(isinstance(v, bytes) and len(v) == 32 for v in values):
                raise PolicyError(f"{label} entries must be 32 bytes")
            object.__setattr__(self, label, values)
        statuses = frozenset(self.allowed_tcb_statuses)
        for status in statuses:
            if status not in KNOWN_TCB_STATUSES:
                raise PolicyError(f"unknown or never-allowable TCB status {status!r}")
        object.__setattr__(self, "allowed_tcb_statuses", statuses)
        advisories = frozenset(self.allowed_advisory_ids)
        for advisory in advisories:
            if not (isinstance(advisory, str) and _ADVISORY_RE.fullmatch(advisory) and len(advisory) <= 64):
                raise PolicyError(f"invalid advisory ID {advisory!r}")
        object.__setattr__(self, "allowed_advisory_ids", advisories)
        if not (isinstance(self.allow_simulated, bool) and isinstance(self.allow_debug, bool)):
            raise PolicyError("allow_simulated and allow_debug must be booleans")

    def floor(self, model: str) -> int:
        """The model's lowest acceptable release (0 when the policy sets none)."""
        return dict(self.floors).get(model, 0)

    def evaluate(self, evidence: VerifiedEvidence) -> Decision:
        """Decide on verified evidence. Never raises: anything unexpected is a refusal."""
        try:
            return self._evaluate(evidence)
        except Exception:  # fail closed on malformed evidence objects or any bug below
            return _refuse("policy evaluation failed")

    def _evaluate(self, evidence: object) -> Decision:
        if not isinstance(evidence, VerifiedEvidence) or not isinstance(evidence.identity, EnclaveIdentity):
            return _refuse("evidence is not verified evidence")
        ident = evidence.identity
        reason = self._gate(evidence)
        if reason is not None:
            return _refuse(reason, ident)
        misses: list[tuple[int, str]] = []
        for rule in self.rules:
            miss = rule.mismatch(ident)
            if miss is None:
                return Decision(
                    accepted=True, reason="accepted", rule=rule.name, secrets=rule.secrets, identity=ident
                )
            misses.append(miss)
        return _refuse(_closest_miss(misses), ident)

    def _gate(self, evidence: VerifiedEvidence) -> str | None:
        """Checks 1-5 of the module docstring: the first failing one's reason, else None."""
        ident = evidence.identity
        status: object = evidence.tcb_status
        advisories: object = evidence.advisory_ids
        bad_advisories: list[object] = (
            [a for a in advisories if not isinstance(a, str) or a not in self.allowed_advisory_ids]
            if isinstance(advisories, tuple)
            else [advisories]  # malformed: refused like an advisory that is not allowed
        )
        checks = (
            (ident.mr_enclave in self.deny_mr_enclave, "denied: mr_enclave on deny list"),
            (ident.mr_signer in self.deny_mr_signer, "denied: mr_signer on deny list"),
            (
                evidence.simulated is not False and not self.allow_simulated,
                "simulated evidence not allowed by policy",
            ),
            (evidence.debug is not False and not self.allow_debug, "debug enclave not allowed"),
            (
                not isinstance(status, str) or status not in self.allowed_tcb_statuses,
                f"TCB status {_printable(status)} not allowed",
            ),
            (
                bool(bad_advisories),
                f"advisory {_printable(bad_advisories[0] if bad_advisories else '')} not allowed",
            ),
        )
        return next((reason for failed, reason in checks if failed), None)


def _closest_miss(misses: list[tuple[int, str]]) -> str:
    """The reason of the rule that matched most fields (the first such); when no rule matched a single
    field, say which measurements were not found."""
    if not misses:
        return "allow list is empty"
    best = max(score for score, _ in misses)
    reasons = list(dict.fromkeys(reason for score, reason in misses if score == best))
    if best == 0 and set(reasons) == {"mr_enclave not in allow list", "mr_signer not in allow list"}:
        return "mr_enclave and mr_signer not in allow list"
    return reasons[0]


def _printable(value: object) -> str:
    """Evidence strings come from the verifier; still bound them before they reach a message."""
    text = value if isinstance(value, str) else repr(value)
    return text[:64].encode("ascii", "backslashreplace").decode("ascii")


# --------------------------------------------------------------------------------------------------
# Field validators shared by both formats


def _is_u16(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF


def _check_name(value: object, what: str) -> None:
    if not (isinstance(value, str) and len(value) <= _MAX_NAME_CHARS and _NAME_RE.fullmatch(value)):
        raise PolicyError(f"{what} must match {_NAME_RE.pattern} (at most {_MAX_NAME_CHARS} characters)")


def _check_secret_name(value: object) -> None:
    if not (isinstance(value, str) and len(value) <= _MAX_NAME_CHARS and _SECRET_RE.fullmatch(value)):
        raise PolicyError(
            f"secret names must match {_SECRET_RE.pattern} (at most {_MAX_NAME_CHARS} characters)"
        )


def _checked_floors(value: object) -> tuple[tuple[str, int], ...]:
    """(model, floor) pairs, sorted, from a mapping or pairs; names as releases use them."""
    if not isinstance(value, (Mapping, tuple, list)):
        raise PolicyError("floors must map model names to release numbers")
    items: list[Any] = list(value.items()) if isinstance(value, Mapping) else list(value)
    try:
        pairs = tuple(sorted((model, floor) for model, floor in items))
    except (TypeError, ValueError):
        raise PolicyError("floors must map model names to release numbers") from None
    for model, floor in pairs:
        if not (isinstance(model, str) and _MODEL_RE.fullmatch(model)):
            raise PolicyError(f"floors: model names must match {_MODEL_RE.pattern}")
        if type(floor) is not int or not 0 <= floor <= MAX_FLOOR:
            raise PolicyError(f"floor of model {model!r} must be an integer in 0..{MAX_FLOOR}")
    if len({model for model, _ in pairs}) != len(pairs):
        raise PolicyError("a model has two floors")
    return pairs


def _hex32(value: object, where: str) -> bytes:
    if not (isinstance(value, str) and _HEX64_RE.fullmatch(value)):
        raise PolicyError(f"{where} must be 64 hex characters (32 bytes)")
    return bytes.fromhex(value)


def _u16(value: object, where: str) -> int:
    if not _is_u16(value):
        raise PolicyError(f"{where} must be an integer in 0..65535")
    assert isinstance(value, int)
    return value


def _str_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{where} must be a list of strings")
    if len(value) > _MAX_LIST_ITEMS:
        raise PolicyError(f"{where} has more than {_MAX_LIST_ITEMS} entries")
    return value


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where} must be a table")
    return value


def _check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")


def _check_size(data: bytes) -> None:
    if not isinstance(data, bytes):
        raise PolicyError("policy data must be bytes")
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise PolicyError(f"policy file larger than {MAX_POLICY_FILE_BYTES} bytes")


def _decode(data: bytes) -> str:
    _check_size(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy file is not valid UTF-8") from None


# --------------------------------------------------------------------------------------------------
# Native TOML format (docs/policy.md)

NATIVE_VERSION = 1
_TOP_KEYS = (
    "version",
    "allow_simulated",
    "allow_debug",
    "allowed_tcb_statuses",
    "allowed_advisory_ids",
    "deny",
    "allow",
    "floors",
    "max_lease_seconds",
)
_RULE_KEYS = ("name", "mr_enclave", "mr_signer", "isv_prod_id", "min_isv_svn", "secrets")
_DENY_KEYS = ("mr_enclave", "mr_signer")


def parse_policy_toml(data: bytes) -> Policy:
    """Parse the native TOML policy (schema in docs/policy.md). Raises `PolicyError`."""
    text = _decode(data)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy is not valid TOML: {exc}") from None
    except RecursionError:
        raise PolicyError("policy is nested too deeply") from None
    _check_keys(doc, _TOP_KEYS, "policy")
    version = doc.get("version")
    if type(version) is not int or version != NATIVE_VERSION:
        raise PolicyError(f"policy must declare version = {NATIVE_VERSION}")
    flags: dict[str, bool] = {}
    for key in ("allow_simulated", "allow_debug"):
        value = doc.get(key, False)
        if not isinstance(value, bool):
            raise PolicyError(f"{key} must be true or false")
        flags[key] = value
    statuses = _str_list(doc.get("allowed_tcb_statuses", ["UpToDate"]), "allowed_tcb_statuses")
    advisories = _str_list(doc.get("allowed_advisory_ids", []), "allowed_advisory_ids")

    deny = _table(doc.get("deny", {}), "deny")
    _check_keys(deny, _DENY_KEYS, "deny")
    deny_enclave = [
        _hex32(v, "deny.mr_enclave entry") for v in _str_list(deny.get("mr_enclave", []), "deny.mr_enclave")
    ]
    deny_signer = [
        _hex32(v, "deny.mr_signer entry") for v in _str_list(deny.get("mr_signer", []), "deny.mr_signer")
    ]

    raw_rules = doc.get("allow", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("allow must be an array of tables ([[allow]])")
    if len(raw_rules) > _MAX_LIST_ITEMS:
        raise PolicyError(f"allow has more than {_MAX_LIST_ITEMS} rules")
    rules = [_native_rule(raw, index) for index, raw in enumerate(raw_rules)]
    floors = _table(doc.get("floors", {}), "floors")
    if len(floors) > _MAX_LIST_ITEMS:
        raise PolicyError(f"floors has more than {_MAX_LIST_ITEMS} models")
    lease = doc.get("max_lease_seconds")
    return Policy(
        rules=tuple(rules),
        deny_mr_enclave=frozenset(deny_enclave),
        deny_mr_signer=frozenset(deny_signer),
        allowed_tcb_statuses=frozenset(statuses),
        allowed_advisory_ids=frozenset(advisories),
        allow_simulated=flags["allow_simulated"],
        allow_debug=flags["allow_debug"],
        floors=tuple(floors.items()),
        max_lease_seconds=lease,
    )


def policy_for_identities(
    identities: Sequence[EnclaveIdentity],
    *,
    allow_simulated: bool = False,
    secrets: Sequence[str] = (DEFAULT_SECRET,),
    names: Sequence[str] | None = None,
) -> Policy:
    """A policy approving exactly these identities: each rule pins MRENCLAVE and the full signer triple
    (MRSIGNER, ISVPRODID and the ISVSVN as a minimum), so a rule can never match other code, another
    product or another signer's enclave."""
    if not identities:
        raise PolicyError("a policy from measurements needs at least one measurement")
    rule_names = list(names) if names is not None else [f"replica-{i}" for i in range(len(identities))]
    if len(rule_names) != len(identities):
        raise PolicyError("one rule name per identity")
    rules = tuple(
        AllowRule(
            name=name,
            mr_enclave=ident.mr_enclave,
            mr_signer=ident.mr_signer,
            isv_prod_id=ident.isv_prod_id,
            min_isv_svn=ident.isv_svn,
            secrets=tuple(secrets),
        )
        for name, ident in zip(rule_names, identities, strict=True)
    )
    return Policy(rules=rules, allow_simulated=allow_simulated)


def render_policy_toml(policy: Policy, *, comment: str = "") -> str:
    """The native TOML text of `policy` (docs/policy.md); `parse_policy_toml` reads it back to an equal
    Policy. `comment` becomes leading `#` lines. A rule with `exact_isv_svn` (ra_config.json semantics)
    has no native form and raises PolicyError."""
    import tomli_w  # noqa: PLC0415 - only writers of policies need it

    doc: dict[str, Any] = {
        "version": NATIVE_VERSION,
        "allow_simulated": policy.allow_simulated,
        "allow_debug": policy.allow_debug,
        "allowed_tcb_statuses": sorted(policy.allowed_tcb_statuses),
    }
    if policy.allowed_advisory_ids:
        doc["allowed_advisory_ids"] = sorted(policy.allowed_advisory_ids)
    deny = {
        key: sorted(v.hex() for v in values)
        for key, values in (("mr_enclave", policy.deny_mr_enclave), ("mr_signer", policy.deny_mr_signer))
        if values
    }
    if deny:
        doc["deny"] = deny
    if policy.max_lease_seconds is not None:
        doc["max_lease_seconds"] = policy.max_lease_seconds
    doc["allow"] = [_native_table(rule) for rule in policy.rules]
    if policy.floors:
        doc["floors"] = dict(policy.floors)
    header = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
    return header + tomli_w.dumps(doc)


def _native_table(rule: AllowRule) -> dict[str, Any]:
    if rule.exact_isv_svn is not None:
        raise PolicyError(f"rule {rule.name!r}: an exact isv_svn (ra_config.json) has no native TOML form")
    table: dict[str, Any] = {"name": rule.name}
    if rule.mr_enclave is not None:
        table["mr_enclave"] = rule.mr_enclave.hex()
    if rule.mr_signer is not None:
        table["mr_signer"] = rule.mr_signer.hex()
    if rule.isv_prod_id is not None:
        table["isv_prod_id"] = rule.isv_prod_id
    if rule.min_isv_svn is not None:
        table["min_isv_svn"] = rule.min_isv_svn
    table["secrets"] = list(rule.secrets)
    return table


def _native_rule(raw: object, index: int) -> AllowRule:
    where = f"allow[{index}]"
    table = _table(raw, where)
    _check_keys(table, _RULE_KEYS, where)
    name = table.get("name")
    _check_name(name, f"{where}.name")
    assert isinstance(name, str)
    where = f"rule {name!r}"
    mr_enclave = _hex32(table["mr_enclave"], f"{where}: mr_enclave") if "mr_enclave" in table else None
    mr_signer = _hex32(table["mr_signer"], f"{where}: mr_signer") if "mr_signer" in table else None
    prod_id = _u16(table["isv_prod_id"], f"{where}: isv_prod_id") if "isv_prod_id" in table else None
    min_svn = _u16(table["min_isv_svn"], f"{where}: min_isv_svn") if "min_isv_svn" in table else None
    # A rule must pin the code (mr_enclave) or the full signer triple; a signer alone would accept any
    # product and any (older, vulnerable) version signed with that key.
    if mr_enclave is None and (mr_signer is None or prod_id is None or min_svn is None):
        raise PolicyError(f"{where}: needs mr_enclave, or mr_signer with isv_prod_id and min_isv_svn")
    secrets = _str_list(table.get("secrets", [DEFAULT_SECRET]), f"{where}: secrets")
    return AllowRule(
        name=name,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        isv_prod_id=prod_id,
        min_isv_svn=min_svn,
        secrets=tuple(secrets),
    )


# --------------------------------------------------------------------------------------------------
# Reference ra_config.json

_RA_SWITCHES = ("verify_mr_enclave", "verify_mr_signer", "verify_isv_prod_id", "verify_isv_svn")
_RA_ENTRY_KEYS = ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")


def _reject_constant(token: str) -> None:
    raise PolicyError(f"invalid JSON constant {token}")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise PolicyError("duplicate key in JSON object")
    return dict(pairs)


def _ra_number(value: object, where: str) -> int:
    """Reference: a decimal string read with strtoul into a u16. Also accept a JSON integer."""
    if isinstance(value, str):
        if not _DECIMAL_RE.fullmatch(value):
            raise PolicyError(f"{where} must be a decimal number in 0..65535")
        value = int(value)
    return _u16(value, where)


def parse_ra_config(
    data: bytes,
    *,
    allow_simulated: bool = False,
    allow_debug: bool = False,
    allowed_tcb_statuses: Iterable[str] = _DEFAULT_TCB_STATUSES,
    allowed_advisory_ids: Iterable[str] = (),
    secrets: tuple[str, ...] = (DEFAULT_SECRET,),
) -> Policy:
    """Parse the reference's ra_config.json into a `Policy` (semantics in the module docstring).

    The file says nothing about TCB, debug or simulation; those come from the keyword arguments, whose
    defaults are the strict ones. Every entry grants `secrets`.
    """
    text = _decode(data)
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"ra_config.json is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise PolicyError("ra_config.json is nested too deeply") from None
    config = _table(doc, "ra_config.json")
    _check_keys(config, (*_RA_SWITCHES, "mrs"), "ra_config.json")
    enabled: dict[str, bool] = {}
    for switch in _RA_SWITCHES:
        if switch not in config:
            raise PolicyError(f"ra_config.json: missing {switch!r}")
        value = config[switch]
        if value not in ("on", "off"):
            raise PolicyError(f'ra_config.json: {switch} must be "on" or "off"')
        enabled[switch] = value == "on"
    if "mrs" not in config or not isinstance(config["mrs"], list):
        raise PolicyError("ra_config.json: mrs must be a list")
    entries = config["mrs"]
    if len(entries) > RA_CONFIG_MAX_ENTRIES:
        raise PolicyError(f"ra_config.json: more than {RA_CONFIG_MAX_ENTRIES} mrs entries")

    rules: list[AllowRule] = []
    if not any(enabled.values()):
        # Reference: all switches off accepts any enclave. Kept, and named so logs show it.
        rules.append(AllowRule(name="ra_config:any", secrets=secrets))
    for index, raw in enumerate(entries):
        where = f"ra_config.json: mrs[{index}]"
        entry = _table(raw, where)
        _check_keys(entry, _RA_ENTRY_KEYS, where)
        missing = [key for key in _RA_ENTRY_KEYS if key not in entry]
        if missing:
            raise PolicyError(f"{where}: missing {', '.join(map(repr, missing))}")
        mr_enclave = _hex32(entry["mr_enclave"], f"{where}.mr_enclave")
        mr_signer = _hex32(entry["mr_signer"], f"{where}.mr_signer")
        prod_id = _ra_number(entry["isv_prod_id"], f"{where}.isv_prod_id")
        svn = _ra_number(entry["isv_svn"], f"{where}.isv_svn")
        if not any(enabled.values()):
            continue
        rules.append(
            AllowRule(
                name=f"mrs[{index}]",
                mr_enclave=mr_enclave if enabled["verify_mr_enclave"] else None,
                mr_signer=mr_signer if enabled["verify_mr_signer"] else None,
                isv_prod_id=prod_id if enabled["verify_isv_prod_id"] else None,
                exact_isv_svn=svn if enabled["verify_isv_svn"] else None,
                secrets=secrets,
            )
        )
    return Policy(
        rules=tuple(rules),
        allowed_tcb_statuses=frozenset(allowed_tcb_statuses),
        allowed_advisory_ids=frozenset(allowed_advisory_ids),
        allow_simulated=allow_simulated,
        allow_debug=allow_debug,
    )


# --------------------------------------------------------------------------------------------------
# File loading (the only I/O in this module)


def load_policy_file(path: Path, *, allow_simulated_ra_config: bool = False) -> Policy:
    """Read a policy file: `*.json` is ra_config.json, `*.toml` the native format.

    `allow_simulated_ra_config` applies to ra_config.json only (the native format says it itself).
    """
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise PolicyError("policy file name must end in .toml (native) or .json (ra_config.json)")
    try:
        with open_input(path) as handle:
            data = handle.read(MAX_POLICY_FILE_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
    if suffix == ".toml":
        return parse_policy_toml(data)
    return parse_ra_config(data, allow_simulated=allow_simulated_ra_config)
