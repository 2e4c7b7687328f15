"""The purpose table and decide(): pure, no database."""

from __future__ import annotations

import pytest

from privacy.errors import PolicyError
from privacy.purposes import (
    SubjectState,
    Transform,
    Verdict,
    default_table,
    matches,
    parse,
)
from privacy.transforms import apply, coarsen, mask, pseudonymise

TABLE = default_table()
ACCOUNT = {"email": "user.contact.email", "name": "user.name", "household_id": "user.account"}
DEVICE = {"device_id": "user.device.pseudonymous_id", "mac": "user.device.device_id"}
HEALTH = {"ts": "system.operations", "value": "user.health_and_medical"}


def test_table_is_versioned_and_hashed():
    """The shipped table parses, and its policy version carries a content hash."""
    assert TABLE.version
    assert len(TABLE.digest) == 64
    assert TABLE.policy_version.startswith(TABLE.version + "@")
    assert {
        "provide_service",
        "improve_service",
        "customer_support",
        "notifications",
        "marketing",
        "personalisation",
        "legal_compliance",
        "security",
    } <= set(TABLE.purposes)


def test_hash_changes_with_content():
    """Editing a rule (not just the version label) changes the digest."""
    text = (
        'version = "1"\n[purposes.p]\ntitle = "t"\ndata_use = "d"\nlegal_basis = "contract"\n'
        'roles = ["r"]\nallowed = ["user.device"]\n'
    )
    assert parse(text).digest != parse(text.replace("user.device", "user.account")).digest


BASE = (
    'version = "1"\n[purposes.p]\ntitle = "t"\ndata_use = "d"\nlegal_basis = "contract"\n'
    'roles = ["r"]\nallowed = ["user.device"]\n'
)


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        'version = "1"',
        BASE.replace("contract", "whim"),
        BASE.replace("contract", "consent"),
    ],
)
def test_malformed_tables_are_refused(text):
    """Syntax errors, missing keys, unknown bases and consent without a key are refused."""
    with pytest.raises(PolicyError):
        parse(text)


def test_prefix_matching_is_on_dotted_keys():
    """A prefix covers its descendants, not siblings that share letters."""
    assert matches("user.device.device_id", "user.device")
    assert matches("user.device", "user.device")
    assert not matches("user.devices", "user.device")


def test_undeclared_purpose_and_wrong_role_are_refused_whole():
    """An undeclared purpose or a role outside the purpose denies every field."""
    d = TABLE.decide("curiosity", frozenset({"dpo"}), ACCOUNT)
    assert d.error == "purpose_undeclared"
    assert d.verdict is Verdict.DENY
    d = TABLE.decide("marketing", frozenset({"support"}), ACCOUNT)
    assert d.error == "role_not_permitted"
    assert set(d.denied) == set(ACCOUNT)
    assert d.subject_fields(SubjectState()) == ((), "role_not_permitted")


def test_marketing_needs_consent_and_never_sees_devices():
    """Marketing reads contact fields only, and only of subjects who consented."""
    d = TABLE.decide("marketing", frozenset({"marketing"}), {**ACCOUNT, **DEVICE})
    assert set(d.fields) == set(ACCOUNT)
    assert set(d.denied) == set(DEVICE)
    assert d.denied["mac"] == "category_prohibited"
    assert d.subject_fields(SubjectState()) == ((), "consent_missing")
    fields, why = d.subject_fields(SubjectState(consents=frozenset({"marketing"})))
    assert why is None
    assert set(fields) == set(ACCOUNT)


def test_withdrawal_and_objection_exclude_the_subject():
    """An objection to the purpose excludes a subject even with consent."""
    d = TABLE.decide("marketing", frozenset({"marketing"}), ACCOUNT)
    state = SubjectState(consents=frozenset({"marketing"}), objections=frozenset({"marketing"}))
    assert d.subject_fields(state) == ((), "subject_objected")


def test_support_sees_masked_mac_and_no_health():
    """Customer support gets the MAC masked and is refused health data."""
    d = TABLE.decide("customer_support", frozenset({"support"}), {**DEVICE, **HEALTH})
    assert d.transforms["mac"] is Transform.MASK
    assert "device_id" not in d.transforms
    assert d.denied["value"] == "category_prohibited"
    assert d.verdict is Verdict.PARTIAL


def test_restricted_subject_is_readable_only_for_legal_compliance():
    """Art. 18: a restricted subject is excluded from every purpose but legal compliance."""
    restricted = SubjectState(restricted=True)
    for purpose, role in [("provide_service", "subject"), ("customer_support", "support")]:
        d = TABLE.decide(purpose, frozenset({role}), ACCOUNT)
        assert d.subject_fields(restricted) == ((), "subject_restricted")
    d = TABLE.decide("legal_compliance", frozenset({"dpo"}), ACCOUNT)
    fields, why = d.subject_fields(restricted)
    assert why is None
    assert set(fields) == set(ACCOUNT)


def test_health_needs_explicit_consent_per_subject():
    """Art. 9: health fields go only to subjects with explicit health consent."""
    d = TABLE.decide("provide_service", frozenset({"subject"}), HEALTH)
    assert d.special == ("value",)
    assert d.art9 is not None
    assert d.art9.condition == "explicit_consent"
    assert d.subject_fields(SubjectState()) == (("ts",), None)
    assert d.subject_fields(SubjectState(consents=frozenset({"health"}))) == (("ts", "value"), None)


def test_analysts_get_pseudonyms_and_no_identifiers():
    """Improve-service reads telemetry with pseudonymised device ids and no MAC."""
    fields = {**DEVICE, "value": "user.device.telemetry"}
    d = TABLE.decide("improve_service", frozenset({"analyst"}), fields)
    assert d.denied["mac"] == "category_prohibited"
    assert d.transforms["device_id"] is Transform.PSEUDONYMISE
    assert "value" in d.fields


def test_transforms():
    """Masks keep only what support needs; coarsening rounds to 2 m; pseudonyms are keyed."""
    assert mask("02:1A:2B:3C:4D:5E") == "**:**:**:**:4D:5E"
    assert mask("jane.doe@example.com") == "j***@example.com"
    assert mask("192.168.10.20").endswith("20")
    assert "192" not in mask("192.168.10.20")
    assert coarsen(3.14) == 4.0
    assert coarsen(True) is True
    assert pseudonymise(b"k" * 32, "a", "x") != pseudonymise(b"k" * 32, "b", "x")
    assert pseudonymise(b"k" * 32, "a", "x") == pseudonymise(b"k" * 32, "a", "x")
    assert apply(Transform.MASK, None, key=b"k", purpose="p") is None
    assert apply(Transform.COARSEN, 1.1, key=b"k", purpose="p") == 2.0
    assert len(str(apply(Transform.PSEUDONYMISE, "dev", key=b"k", purpose="p"))) == 16
