"""Attestation policy: reference ra_config.json semantics, native TOML policy, strict parsing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from confserve.attestation import (
    AllowRule,
    Decision,
    EnclaveIdentity,
    Policy,
    PolicyError,
    VerifiedEvidence,
    load_policy_file,
    parse_policy_toml,
    parse_ra_config,
)
from confserve.attestation._policy import KNOWN_TCB_STATUSES, MAX_POLICY_FILE_BYTES

# The reference's committed ra_config.json values are quoted truncated in the reference's notes
# ("7de5ab70…fd90", "b11a7be3…6ae8"); the middle is filled in here.
REF_ENCLAVE = "7de5ab70" + "00" * 26 + "fd90"
REF_SIGNER = "b11a7be3" + "11" * 26 + "6ae8"
OTHER = "ab" * 32
OTHER2 = "cd" * 32


def ident(
    mr_enclave: str = REF_ENCLAVE, mr_signer: str = REF_SIGNER, prod: int = 0, svn: int = 0
) -> EnclaveIdentity:
    return EnclaveIdentity(bytes.fromhex(mr_enclave), bytes.fromhex(mr_signer), prod, svn)


def evidence(
    identity: EnclaveIdentity | None = None,
    *,
    debug: bool = False,
    tcb_status: str = "UpToDate",
    advisory_ids: tuple[str, ...] = (),
    simulated: bool = False,
) -> VerifiedEvidence:
    return VerifiedEvidence(
        identity=identity or ident(),
        report_data=bytes(64),
        debug=debug,
        tcb_status=tcb_status,
        advisory_ids=advisory_ids,
        simulated=simulated,
    )


def ra_config(
    entries: list[dict[str, Any]] | None = None,
    *,
    enclave: str = "on",
    signer: str = "on",
    prod: str = "on",
    svn: str = "on",
) -> bytes:
    if entries is None:
        entries = [{"mr_enclave": REF_ENCLAVE, "mr_signer": REF_SIGNER, "isv_prod_id": "0", "isv_svn": "0"}]
    doc = {
        "verify_mr_enclave": enclave,
        "verify_mr_signer": signer,
        "verify_isv_prod_id": prod,
        "verify_isv_svn": svn,
        "mrs": entries,
    }
    return json.dumps(doc, indent=4).encode()


def entry(
    mr_enclave: str = REF_ENCLAVE, mr_signer: str = REF_SIGNER, prod: Any = "0", svn: Any = "0"
) -> dict[str, Any]:
    return {"mr_enclave": mr_enclave, "mr_signer": mr_signer, "isv_prod_id": prod, "isv_svn": svn}


# --------------------------------------------------------------------------------------------------
# ra_config.json


def test_reference_example_accepts_its_enclave_and_refuses_others() -> None:
    policy = parse_ra_config(ra_config())
    decision = policy.evaluate(evidence())
    assert decision.accepted
    assert decision.rule == "mrs[0]"
    assert decision.secrets == ("default",)
    assert decision.reason == "accepted"
    refused = policy.evaluate(evidence(ident(mr_enclave=OTHER)))
    assert not refused.accepted
    assert refused.reason == "mr_enclave not in allow list"
    assert refused.secrets == ()
    assert refused.rule is None


@pytest.mark.parametrize(
    ("switch", "mismatch", "reason"),
    [
        ("enclave", {"mr_enclave": OTHER}, "mr_enclave not in allow list"),
        ("signer", {"mr_signer": OTHER}, "mr_signer not in allow list"),
        ("prod", {"prod": 7}, "isv_prod_id 7 does not match 0 for rule 'mrs[0]'"),
        ("svn", {"svn": 3}, "isv_svn 3 does not equal 0 for rule 'mrs[0]'"),
    ],
)
def test_each_switch_on_checks_and_off_ignores_its_field(
    switch: str, mismatch: dict[str, Any], reason: str
) -> None:
    candidate = evidence(ident(**mismatch))
    on = parse_ra_config(ra_config())
    assert on.evaluate(candidate).reason == reason
    off = parse_ra_config(ra_config(**{switch: "off"}))
    assert off.evaluate(candidate).accepted


def test_all_switches_off_accepts_any_enclave() -> None:
    policy = parse_ra_config(ra_config(enclave="off", signer="off", prod="off", svn="off"))
    decision = policy.evaluate(evidence(ident(OTHER, OTHER2, 9, 9)))
    assert decision.accepted
    assert decision.rule == "ra_config:any"
    # Only identity is waived: the strict TCB/debug/simulated defaults still hold.
    assert not policy.evaluate(evidence(debug=True)).accepted


def test_all_switches_off_with_no_entries_still_accepts_any() -> None:
    policy = parse_ra_config(ra_config([], enclave="off", signer="off", prod="off", svn="off"))
    assert policy.evaluate(evidence(ident(OTHER))).accepted


def test_isv_svn_is_exact_equality_not_a_minimum() -> None:
    policy = parse_ra_config(ra_config([entry(svn="5")]))
    assert policy.evaluate(evidence(ident(svn=5))).accepted
    assert policy.evaluate(evidence(ident(svn=6))).reason == "isv_svn 6 does not equal 5 for rule 'mrs[0]'"
    assert policy.evaluate(evidence(ident(svn=4))).reason == "isv_svn 4 does not equal 5 for rule 'mrs[0]'"


def test_one_entry_must_match_all_enabled_fields() -> None:
    # Entry 0 has our enclave but another signer, entry 1 our signer but another enclave.
    policy = parse_ra_config(ra_config([entry(mr_signer=OTHER), entry(mr_enclave=OTHER)]))
    decision = policy.evaluate(evidence())
    assert not decision.accepted
    assert decision.reason == "mr_signer not in allow list"


def test_any_entry_may_match() -> None:
    policy = parse_ra_config(ra_config([entry(mr_enclave=OTHER), entry(), entry(mr_enclave=OTHER2)]))
    decision = policy.evaluate(evidence())
    assert decision.accepted
    assert decision.rule == "mrs[1]"


def test_no_entries_with_switches_on_refuses() -> None:
    assert parse_ra_config(ra_config([])).evaluate(evidence()).reason == "allow list is empty"


def test_numbers_as_decimal_strings_or_integers() -> None:
    policy = parse_ra_config(ra_config([entry(prod="65535", svn=12)]))
    assert policy.rules[0].isv_prod_id == 65535
    assert policy.rules[0].exact_isv_svn == 12


def test_uppercase_hex_accepted() -> None:
    policy = parse_ra_config(ra_config([entry(mr_enclave=REF_ENCLAVE.upper())]))
    assert policy.evaluate(evidence()).accepted


def test_ra_config_defaults_are_strict_and_overridable() -> None:
    strict = parse_ra_config(ra_config())
    assert strict.evaluate(evidence(simulated=True)).reason == "simulated evidence not allowed by policy"
    assert strict.evaluate(evidence(debug=True)).reason == "debug enclave not allowed"
    assert strict.evaluate(evidence(tcb_status="OutOfDate")).reason == "TCB status OutOfDate not allowed"
    relaxed = parse_ra_config(
        ra_config(),
        allow_simulated=True,
        allow_debug=True,
        allowed_tcb_statuses=["UpToDate", "OutOfDate"],
        allowed_advisory_ids=["INTEL-SA-00615"],
        secrets=("model-key",),
    )
    decision = relaxed.evaluate(
        evidence(simulated=True, debug=True, tcb_status="OutOfDate", advisory_ids=("INTEL-SA-00615",))
    )
    assert decision.accepted
    assert decision.secrets == ("model-key",)


@pytest.mark.parametrize("value", ["o", "onX", "ON", "On", "of", "", "true", True, 1, None])
def test_switch_must_be_exactly_on_or_off(value: object) -> None:
    doc = json.loads(ra_config())
    doc["verify_mr_signer"] = value
    with pytest.raises(PolicyError, match="verify_mr_signer must be"):
        parse_ra_config(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("verify_isv_svn"), "missing 'verify_isv_svn'"),
        (lambda d: d.pop("mrs"), "mrs must be a list"),
        (lambda d: d.update(mrs={}), "mrs must be a list"),
        (lambda d: d.update(extra=1), "unknown key"),
        (lambda d: d["mrs"][0].pop("isv_svn"), "missing 'isv_svn'"),
        (lambda d: d["mrs"][0].update(comment="x"), "unknown key"),
        (lambda d: d["mrs"].append("not an object"), r"mrs\[1\] must be a table"),
        (lambda d: d["mrs"][0].update(mr_enclave=REF_ENCLAVE[:-1]), "64 hex"),
        (lambda d: d["mrs"][0].update(mr_enclave=REF_ENCLAVE + "00"), "64 hex"),
        (lambda d: d["mrs"][0].update(mr_signer="zz" * 32), "64 hex"),
        (lambda d: d["mrs"][0].update(mr_signer=None), "64 hex"),
        (lambda d: d["mrs"][0].update(isv_prod_id="65536"), "0..65535"),
        (lambda d: d["mrs"][0].update(isv_prod_id="-1"), "decimal number"),
        (lambda d: d["mrs"][0].update(isv_prod_id="0x10"), "decimal number"),
        (lambda d: d["mrs"][0].update(isv_prod_id=" 1"), "decimal number"),
        (lambda d: d["mrs"][0].update(isv_svn=True), "0..65535"),
        (lambda d: d["mrs"][0].update(isv_svn=1.5), "0..65535"),
        (lambda d: d["mrs"][0].update(isv_svn=-1), "0..65535"),
        (lambda d: d.update(mrs=[entry()] * 101), "more than 100"),
    ],
)
def test_malformed_ra_config_rejected(mutate: Any, message: str) -> None:
    doc = json.loads(ra_config())
    mutate(doc)
    with pytest.raises(PolicyError, match=message):
        parse_ra_config(json.dumps(doc).encode())


def test_hundred_entries_accepted() -> None:
    assert len(parse_ra_config(ra_config([entry()] * 100)).rules) == 100


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a table"),
        (b'{"verify_mr_enclave": "on", "verify_mr_enclave": "off"}', "duplicate key"),
        (b'{"mrs": NaN}', "invalid JSON constant NaN"),
        (b"\xff\xfe", "UTF-8"),
        (b"[" * 100_000, "nested too deeply|not valid JSON"),
        (b" " * (MAX_POLICY_FILE_BYTES + 1), "larger than"),
    ],
)
def test_broken_ra_config_bytes_rejected(data: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_ra_config(data)


def test_policy_data_must_be_bytes() -> None:
    with pytest.raises(PolicyError, match="bytes"):
        parse_ra_config("{}")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Native TOML

NATIVE = f"""
version = 1
allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
allowed_advisory_ids = ["INTEL-SA-00615"]

[deny]
mr_enclave = ["{OTHER2}"]
mr_signer = []

[[allow]]
name = "prod"
mr_signer = "{REF_SIGNER}"
isv_prod_id = 1
min_isv_svn = 5
secrets = ["model-key", "tls-config"]

[[allow]]
name = "canary"
mr_enclave = "{OTHER}"
""".encode()


def test_native_example() -> None:
    policy = parse_policy_toml(NATIVE)
    assert policy.allowed_tcb_statuses == {"UpToDate", "SWHardeningNeeded"}
    assert not policy.allow_simulated
    assert not policy.allow_debug
    prod = policy.evaluate(evidence(ident(mr_enclave=OTHER2[:-2] + "00", prod=1, svn=5)))
    assert prod.accepted
    assert (prod.rule, prod.secrets) == ("prod", ("model-key", "tls-config"))
    canary = policy.evaluate(evidence(ident(mr_enclave=OTHER, mr_signer=OTHER2, prod=3, svn=0)))
    assert (canary.rule, canary.secrets) == ("canary", ("default",))


def test_min_isv_svn_is_a_minimum() -> None:
    policy = parse_policy_toml(NATIVE)
    assert policy.evaluate(evidence(ident(prod=1, svn=6))).accepted
    assert policy.evaluate(evidence(ident(prod=1, svn=0xFFFF))).accepted
    refused = policy.evaluate(evidence(ident(prod=1, svn=3)))
    assert refused.reason == "isv_svn 3 below minimum 5 for rule 'prod'"


def test_isv_prod_id_mismatch_reason() -> None:
    refused = parse_policy_toml(NATIVE).evaluate(evidence(ident(prod=2, svn=9)))
    assert refused.reason == "isv_prod_id 2 does not match 1 for rule 'prod'"


def test_unknown_identity_reason_names_the_unknown_measurements() -> None:
    refused = parse_policy_toml(NATIVE).evaluate(evidence(ident(mr_enclave=REF_ENCLAVE, mr_signer=OTHER)))
    assert refused.reason == "mr_enclave and mr_signer not in allow list"
    signer_only = Policy(rules=(parse_policy_toml(NATIVE).rules[0],))
    assert signer_only.evaluate(evidence(ident(mr_signer=OTHER))).reason == "mr_signer not in allow list"


def test_reason_comes_from_the_closest_rule() -> None:
    # Rule "canary" pins only mr_enclave; "prod" matched signer and product before failing on the SVN.
    refused = parse_policy_toml(NATIVE).evaluate(evidence(ident(prod=1, svn=4)))
    assert refused.reason == "isv_svn 4 below minimum 5 for rule 'prod'"
    only_prod_id = Policy(rules=(AllowRule(name="p", isv_prod_id=3),))
    assert only_prod_id.evaluate(evidence()).reason == "isv_prod_id 0 does not match 3 for rule 'p'"


def test_first_matching_rule_wins() -> None:
    policy = Policy(
        rules=(
            AllowRule(name="a", mr_enclave=bytes.fromhex(REF_ENCLAVE), secrets=("s1",)),
            AllowRule(name="b", mr_enclave=bytes.fromhex(REF_ENCLAVE), secrets=("s2",)),
        )
    )
    assert policy.evaluate(evidence()).secrets == ("s1",)


def test_deny_wins_over_allow() -> None:
    base = f"""
version = 1
[[allow]]
name = "everything-we-know"
mr_enclave = "{REF_ENCLAVE}"
"""
    allowed = parse_policy_toml(base.encode())
    assert allowed.evaluate(evidence()).accepted
    by_enclave = parse_policy_toml(f'{base}\n[deny]\nmr_enclave = ["{REF_ENCLAVE}"]\n'.encode())
    assert by_enclave.evaluate(evidence()).reason == "denied: mr_enclave on deny list"
    by_signer = parse_policy_toml(f'{base}\n[deny]\nmr_signer = ["{REF_SIGNER.upper()}"]\n'.encode())
    assert by_signer.evaluate(evidence()).reason == "denied: mr_signer on deny list"
    # Deny is checked before everything else, also before the relaxations.
    relaxed = dataclasses.replace(by_signer, allow_debug=True, allow_simulated=True)
    assert relaxed.evaluate(evidence(debug=True, simulated=True)).reason == "denied: mr_signer on deny list"


def permissive(**changes: Any) -> Policy:
    return dataclasses.replace(
        Policy(rules=(AllowRule(name="any-ref", mr_enclave=bytes.fromhex(REF_ENCLAVE)),)), **changes
    )


@pytest.mark.parametrize("status", sorted(KNOWN_TCB_STATUSES))
@pytest.mark.parametrize(
    "allowed",
    [
        frozenset({"UpToDate"}),
        frozenset({"UpToDate", "SWHardeningNeeded"}),
        frozenset({"OutOfDate", "ConfigurationNeeded"}),
        frozenset(),
        frozenset(KNOWN_TCB_STATUSES),
    ],
)
def test_tcb_status_matrix(status: str, allowed: frozenset[str]) -> None:
    decision = permissive(allowed_tcb_statuses=allowed).evaluate(evidence(tcb_status=status))
    assert decision.accepted == (status in allowed)
    if not decision.accepted:
        assert decision.reason == f"TCB status {status} not allowed"


@pytest.mark.parametrize("status", ["Revoked", "TDRelaunchAdvised", "uptodate", "", "UpToDate\n"])
def test_unknown_or_revoked_status_never_accepted(status: str) -> None:
    everything = permissive(allowed_tcb_statuses=KNOWN_TCB_STATUSES)
    decision = everything.evaluate(evidence(tcb_status=status))
    assert not decision.accepted
    assert decision.reason.startswith("TCB status ")


@pytest.mark.parametrize("status", ["Revoked", "Bogus"])
def test_policy_cannot_allow_revoked_or_unknown_status(status: str) -> None:
    with pytest.raises(PolicyError, match="TCB status"):
        parse_policy_toml(f'version = 1\nallowed_tcb_statuses = ["{status}"]\n'.encode())
    with pytest.raises(PolicyError, match="TCB status"):
        parse_ra_config(ra_config(), allowed_tcb_statuses=[status])


@pytest.mark.parametrize(
    ("advisories", "allowed", "reason"),
    [
        ((), frozenset(), None),
        (("INTEL-SA-00615",), frozenset(), "advisory INTEL-SA-00615 not allowed"),
        (("INTEL-SA-00615",), frozenset({"INTEL-SA-00615"}), None),
        (
            ("INTEL-SA-00615", "INTEL-SA-00657"),
            frozenset({"INTEL-SA-00615"}),
            "advisory INTEL-SA-00657 not allowed",
        ),
        (("INTEL-SA-00615", "INTEL-SA-00657"), frozenset({"INTEL-SA-00615", "INTEL-SA-00657"}), None),
        ((), frozenset({"INTEL-SA-00615"}), None),
    ],
)
def test_advisory_matrix(advisories: tuple[str, ...], allowed: frozenset[str], reason: str | None) -> None:
    policy = permissive(allowed_advisory_ids=allowed, allowed_tcb_statuses={"UpToDate", "SWHardeningNeeded"})
    decision = policy.evaluate(evidence(tcb_status="SWHardeningNeeded", advisory_ids=advisories))
    assert decision.accepted == (reason is None)
    if reason is not None:
        assert decision.reason == reason


@pytest.mark.parametrize("simulated", [False, True])
@pytest.mark.parametrize("allow_simulated", [False, True])
@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("allow_debug", [False, True])
def test_simulated_and_debug_matrix(
    simulated: bool, allow_simulated: bool, debug: bool, allow_debug: bool
) -> None:
    policy = permissive(allow_simulated=allow_simulated, allow_debug=allow_debug)
    decision = policy.evaluate(evidence(simulated=simulated, debug=debug))
    expected_reason = None
    if simulated and not allow_simulated:
        expected_reason = "simulated evidence not allowed by policy"
    elif debug and not allow_debug:
        expected_reason = "debug enclave not allowed"
    assert decision.accepted == (expected_reason is None)
    assert decision.reason == (expected_reason or "accepted")


def test_native_flags_parse() -> None:
    policy = parse_policy_toml(b"version = 1\nallow_simulated = true\nallow_debug = true\n")
    assert policy.allow_simulated
    assert policy.allow_debug
    assert policy.evaluate(evidence()).reason == "allow list is empty"


def test_non_boolean_evidence_flags_fail_closed() -> None:
    policy = permissive()
    weird = dataclasses.replace(evidence(), simulated=None)  # type: ignore[arg-type]
    assert policy.evaluate(weird).reason == "simulated evidence not allowed by policy"
    weird = dataclasses.replace(evidence(), debug=1)  # type: ignore[arg-type]
    assert policy.evaluate(weird).reason == "debug enclave not allowed"
    weird = dataclasses.replace(evidence(), tcb_status=b"UpToDate")  # type: ignore[arg-type]
    assert policy.evaluate(weird).reason == "TCB status b'UpToDate' not allowed"
    weird = dataclasses.replace(evidence(), advisory_ids=["INTEL-SA-1"])  # type: ignore[arg-type]
    assert policy.evaluate(weird).reason == "advisory ['INTEL-SA-1'] not allowed"
    weird = dataclasses.replace(evidence(), advisory_ids=(5,))  # type: ignore[arg-type]
    assert policy.evaluate(weird).reason == "advisory 5 not allowed"


def test_garbage_evidence_is_refused_not_raised() -> None:
    policy = permissive()
    assert policy.evaluate("quote").reason == "evidence is not verified evidence"  # type: ignore[arg-type]
    no_identity = dataclasses.replace(evidence(), identity=None)  # type: ignore[arg-type]
    assert policy.evaluate(no_identity).reason == "evidence is not verified evidence"


def test_unexpected_exception_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: AllowRule, identity: EnclaveIdentity) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(AllowRule, "mismatch", boom)
    decision = permissive().evaluate(evidence())
    assert not decision.accepted
    assert decision.reason == "policy evaluation failed"


def test_long_or_odd_status_bounded_in_reason() -> None:
    decision = permissive().evaluate(evidence(tcb_status="X" * 500 + "é"))
    assert len(decision.reason) < 100
    assert decision.reason.isascii()


def test_policy_and_rules_are_frozen() -> None:
    policy = parse_policy_toml(NATIVE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.allow_debug = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.rules[0].min_isv_svn = 0  # type: ignore[misc]
    assert isinstance(policy.rules, tuple)
    assert isinstance(policy.deny_mr_enclave, frozenset)


def test_decision_require_and_describe() -> None:
    policy = parse_policy_toml(NATIVE)
    accepted = policy.evaluate(evidence(ident(prod=1, svn=5)))
    assert accepted.require() == ("model-key", "tls-config")
    assert accepted.describe().startswith("accepted by rule 'prod' (mr_enclave 7de5ab70")
    refused = policy.evaluate(evidence(ident(prod=1, svn=3)))
    with pytest.raises(PolicyError, match="isv_svn 3 below minimum 5"):
        refused.require()
    assert "isv_svn 3)" in refused.describe()
    assert Decision(accepted=False, reason="x").describe() == "refused: x"


# Strict native parsing ---------------------------------------------------------------------------

RULE = f'[[allow]]\nname = "r"\nmr_enclave = "{REF_ENCLAVE}"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "version = 1"),
        ("version = 2", "version = 1"),
        ("version = true", "version = 1"),
        ("version = 1.0", "version = 1"),
        ('version = "1"', "version = 1"),
        ("version = 1\nbogus = 1", "unknown key"),
        ("version = 1\nallow_debug = 'yes'", "allow_debug must be true or false"),
        ("version = 1\nallow_simulated = 1", "allow_simulated must be true or false"),
        ("version = 1\nallowed_tcb_statuses = 'UpToDate'", "list of strings"),
        ("version = 1\nallowed_tcb_statuses = [1]", "list of strings"),
        ("version = 1\nallowed_advisory_ids = ['intel sa']", "invalid advisory ID"),
        ("version = 1\ndeny = 1", "deny must be a table"),
        ("version = 1\n[deny]\nmr_enclave = ['00']", "64 hex"),
        ("version = 1\n[deny]\nmr_enclave = 'ab'", "list of strings"),
        ("version = 1\n[deny]\nmrsigner = []", "unknown key"),
        ("version = 1\nallow = 1", "array of tables"),
        ("version = 1\nallow = [1]", "must be a table"),
        (f"version = 1\n{RULE}extra = 1", "unknown key"),
        (f"version = 1\n{RULE}secrets = 'default'", "list of strings"),
        (f"version = 1\n{RULE}secrets = []", "non-empty"),
        (f"version = 1\n{RULE}secrets = ['a', 'a']", "duplicate secret"),
        (f"version = 1\n{RULE}secrets = ['../etc/passwd']", "secret names must match"),
        (f"version = 1\n{RULE}secrets = ['{'x' * 65}']", "secret names must match"),
        (f"version = 1\n{RULE}min_isv_svn = -1", "0..65535"),
        (f"version = 1\n{RULE}min_isv_svn = 65536", "0..65535"),
        (f"version = 1\n{RULE}isv_prod_id = '1'", "0..65535"),
        (f"version = 1\n{RULE}{RULE}", "unique"),
        ('version = 1\n[[allow]]\nmr_enclave = "' + REF_ENCLAVE + '"', "name must match"),
        ('version = 1\n[[allow]]\nname = "has space"\nmr_enclave = "' + REF_ENCLAVE + '"', "name must match"),
        ('version = 1\n[[allow]]\nname = "x"\nmr_enclave = "' + REF_ENCLAVE[:62] + '"', "64 hex"),
        (f'version = 1\n[[allow]]\nname = "signer-only"\nmr_signer = "{REF_SIGNER}"', "needs mr_enclave"),
        (
            f'version = 1\n[[allow]]\nname = "no-svn"\nmr_signer = "{REF_SIGNER}"\nisv_prod_id = 1',
            "needs mr_enclave",
        ),
        ('version = 1\n[[allow]]\nname = "nothing"', "needs mr_enclave"),
        ("version = 1\n[[allow", "not valid TOML"),
        ("version = 1\nversion = 1", "not valid TOML"),
    ],
)
def test_malformed_native_policy_rejected(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy_toml(text.encode())


def test_native_rule_may_pin_enclave_and_signer() -> None:
    text = f'version = 1\n{RULE}mr_signer = "{REF_SIGNER}"\nisv_prod_id = 0\n'
    policy = parse_policy_toml(text.encode())
    assert policy.evaluate(evidence()).accepted
    assert policy.evaluate(evidence(ident(mr_signer=OTHER))).reason == "mr_signer not in allow list"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"version = 1\n" + b"#" * MAX_POLICY_FILE_BYTES, "larger than"),
        (b"version = 1\n# \xff\n", "UTF-8"),
        (b"version = 1\nx = " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"version = 1\nallowed_advisory_ids = [" + b'"A",' * 1001 + b"]", "more than 1000"),
    ],
)
def test_broken_native_bytes_rejected(data: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy_toml(data)


def test_too_many_rules_rejected() -> None:
    rules = "".join(f'[[allow]]\nname = "r{i}"\nmr_enclave = "{REF_ENCLAVE}"\n' for i in range(1001))
    with pytest.raises(PolicyError, match="more than 1000 rules"):
        parse_policy_toml(f"version = 1\n{rules}".encode())


# Direct construction is validated too ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mr_enclave": b"short"}, "32 bytes"),
        ({"mr_signer": "ab" * 32}, "32 bytes"),
        ({"isv_prod_id": True}, "0..65535"),
        ({"min_isv_svn": 1, "exact_isv_svn": 1}, "exclusive"),
        ({"secrets": "default"}, "non-empty"),
        ({"secrets": ("ok", 5)}, "secret names"),
        ({"name": ""}, "rule name"),
    ],
)
def test_allow_rule_validation(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"name": "r", **kwargs}
    with pytest.raises(PolicyError, match=message):
        AllowRule(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rules": ("not a rule",)}, "AllowRule"),
        ({"deny_mr_signer": {b"x"}}, "32 bytes"),
        ({"allowed_tcb_statuses": {"Revoked"}}, "never-allowable"),
        ({"allowed_advisory_ids": {5}}, "advisory"),
        ({"allow_debug": 1}, "booleans"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy(**kwargs)


def test_policy_normalises_iterables() -> None:
    policy = Policy(
        rules=[AllowRule(name="r", mr_enclave=bytes(32), secrets=["a", "b"])],  # type: ignore[arg-type]
        deny_mr_enclave=[bytes(32)],  # type: ignore[arg-type]
        allowed_tcb_statuses=["UpToDate"],  # type: ignore[arg-type]
    )
    assert policy.rules[0].secrets == ("a", "b")
    assert policy.deny_mr_enclave == frozenset({bytes(32)})
    assert hash(policy.rules[0])


# File loading --------------------------------------------------------------------------------------


def test_load_policy_file(tmp_path: Path) -> None:
    native = tmp_path / "policy.toml"
    native.write_bytes(NATIVE)
    assert load_policy_file(native) == parse_policy_toml(NATIVE)
    reference = tmp_path / "ra_config.json"
    reference.write_bytes(ra_config())
    assert not load_policy_file(reference).allow_simulated
    assert (
        load_policy_file(reference, allow_simulated_ra_config=True)
        .evaluate(evidence(simulated=True))
        .accepted
    )


def test_load_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"\.toml"):
        load_policy_file(tmp_path / "policy.yaml")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy_file(tmp_path / "missing.toml")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_POLICY_FILE_BYTES + 10))
    with pytest.raises(PolicyError, match="larger than"):
        load_policy_file(big)
