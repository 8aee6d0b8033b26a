"""Release floors and the lease bound in the native TOML policy: parsed strictly, written back equal."""

from __future__ import annotations

import pytest

from confserve.attestation import AllowRule, Policy, PolicyError, parse_policy_toml, render_policy_toml

RULE = 'version = 1\n[[allow]]\nname = "r"\nmr_enclave = "' + "11" * 32 + '"\n'


def test_floors_and_lease_bound_parse_and_render() -> None:
    text = (
        RULE.replace("[[allow]]", "max_lease_seconds = 60\n[[allow]]") + '[floors]\ndigits = 3\n"a.b-c" = 0\n'
    )
    policy = parse_policy_toml(text.encode())
    assert policy.floors == (("a.b-c", 0), ("digits", 3))
    assert (policy.floor("digits"), policy.floor("unknown")) == (3, 0)
    assert policy.max_lease_seconds == 60
    text = render_policy_toml(policy)
    assert "[floors]" in text
    assert parse_policy_toml(text.encode()) == policy


def test_defaults() -> None:
    policy = parse_policy_toml(RULE.encode())
    assert (policy.floors, policy.max_lease_seconds) == ((), None)
    assert "floors" not in render_policy_toml(policy)
    assert "max_lease_seconds" not in render_policy_toml(policy)


def test_a_mapping_is_sorted() -> None:
    policy = Policy(rules=(AllowRule(name="r", mr_enclave=b"\x11" * 32),), floors={"z": 1, "a": 2})
    assert policy.floors == (("a", 2), ("z", 1))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[floors]\ndigits = -1\n", "0..9007199254740991"),
        ("[floors]\ndigits = 9007199254740992\n", "0..9007199254740991"),
        ("[floors]\ndigits = true\n", "must be an integer"),
        ("[floors]\ndigits = 1.5\n", "must be an integer"),
        ('[floors]\ndigits = "3"\n', "must be an integer"),
        ('[floors]\n"a/b" = 3\n', "model names must match"),
        ('[floors]\n"-a" = 3\n', "model names must match"),
        ('[floors]\n"' + "m" * 129 + '" = 3\n', "model names must match"),
        ("[floors.digits]\nx = 1\n", "must be an integer"),
        ("floors = 3\n", "floors must be a table"),
        ("max_lease_seconds = 0\n", "max_lease_seconds"),
        ("max_lease_seconds = 4294967296\n", "max_lease_seconds"),
        ("max_lease_seconds = 1.5\n", "max_lease_seconds"),
        ('max_lease_seconds = "60"\n', "max_lease_seconds"),
    ],
)
def test_bad_floors_and_leases_are_refused(extra: str, message: str) -> None:
    # Top-level keys must come before the [[allow]] table in TOML.
    text = RULE.replace("[[allow]]", extra + "[[allow]]") if not extra.startswith("[") else RULE + extra
    with pytest.raises(PolicyError, match=message):
        parse_policy_toml(text.encode())


def test_bad_floors_in_code_are_refused() -> None:
    with pytest.raises(PolicyError, match="two floors"):
        Policy(floors=(("m", 1), ("m", 2)))
    with pytest.raises(PolicyError, match="map model names"):
        Policy(floors=3)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="map model names"):
        Policy(floors=((1, 2, 3),))  # type: ignore[arg-type]
