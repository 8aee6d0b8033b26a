"""render_policy_toml writes what parse_policy_toml reads: the round trip gives an equal Policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confserve.attestation import AllowRule, Policy, PolicyError, parse_policy_toml, render_policy_toml

_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_HASH = st.binary(min_size=32, max_size=32)
_U16 = st.integers(0, 0xFFFF)


@st.composite
def rules(draw: st.DrawFn, name: str) -> AllowRule:
    pin_enclave = draw(st.booleans())
    signer_triple = not pin_enclave or draw(st.booleans())
    return AllowRule(
        name=name,
        mr_enclave=draw(_HASH) if pin_enclave else None,
        mr_signer=draw(_HASH) if signer_triple else None,
        isv_prod_id=draw(_U16) if signer_triple else None,
        min_isv_svn=draw(_U16) if signer_triple else None,
        secrets=tuple(draw(st.lists(_NAMES, min_size=1, max_size=3, unique=True))),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    names = draw(st.lists(_NAMES, max_size=4, unique=True))
    return Policy(
        rules=tuple(draw(rules(name)) for name in names),
        deny_mr_enclave=frozenset(draw(st.lists(_HASH, max_size=2))),
        deny_mr_signer=frozenset(draw(st.lists(_HASH, max_size=2))),
        allowed_tcb_statuses=frozenset(
            draw(
                st.lists(
                    st.sampled_from(["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded"]), min_size=1
                )
            )
        ),
        allowed_advisory_ids=frozenset(draw(st.lists(st.from_regex(r"INTEL-SA-[0-9]{5}", fullmatch=True)))),
        allow_simulated=draw(st.booleans()),
        allow_debug=draw(st.booleans()),
    )


@given(policies())
def test_round_trip(policy: Policy) -> None:
    assert parse_policy_toml(render_policy_toml(policy).encode()) == policy


def test_comment_lines_and_readable_layout() -> None:
    policy = Policy(rules=(AllowRule(name="replica", mr_enclave=b"\xab" * 32),), allow_simulated=True)
    text = render_policy_toml(policy, comment="Written by a test.\nSecond line.")
    assert text.startswith("# Written by a test.\n# Second line.\nversion = 1\n")
    assert "allow_simulated = true" in text
    assert "[[allow]]" in text
    assert f'mr_enclave = "{"ab" * 32}"' in text


def test_exact_svn_has_no_native_form() -> None:
    policy = Policy(rules=(AllowRule(name="ra", mr_enclave=bytes(32), exact_isv_svn=3),))
    with pytest.raises(PolicyError, match="exact isv_svn"):
        render_policy_toml(policy)


def test_empty_policy_refuses_everything_after_the_round_trip() -> None:
    text = render_policy_toml(Policy())
    assert parse_policy_toml(text.encode()).rules == ()
