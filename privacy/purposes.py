"""The purpose table and the access decision (pure).

Owns: parsing and hashing the purpose table (``purposes.toml``, data the DPO owns), and
``decide()``: for an actor asking for named fields under a purpose, which fields are returned,
which are returned only transformed and which are denied, on which legal basis, and what every
data subject in the result must have given (consent, Art. 9 explicit consent) or not asked for
(restriction, objection). Does not own: reading subjects' consent state or any data
(``privacy.postgres_gate``) nor writing the audit trail.

Rules, after Byun & Li's purpose-based access control (research/privacy-crypto.md 1.2):
an undeclared purpose is denied; a field is denied when its category matches a prohibited prefix
or no allowed prefix (prohibition wins); special categories (Art. 9) also need the purpose's
Art. 9 condition and, for explicit consent, that subject's active consent; a consent-based
purpose needs each subject's active consent; a restricted subject is readable only under a
purpose marked ``restricted_subjects``; an objection to a purpose excludes the subject.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

from privacy.errors import PolicyError

SPECIAL_CATEGORIES = ("user.health_and_medical", "user.biometric", "user.genetic")


class LegalBasis(StrEnum):
    """Art. 6(1) bases (fideslang LegalBasisForProcessingEnum)."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    LEGITIMATE_INTERESTS = "legitimate_interests"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"


class Transform(StrEnum):
    """How a field leaves the service when the purpose only needs it partially."""

    MASK = "mask"
    COARSEN = "coarsen"
    PSEUDONYMISE = "pseudonymise"


class Verdict(StrEnum):
    """Overall outcome of a decision, as audited."""

    ALLOW = "allow"
    PARTIAL = "partial"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Art9:
    """The Art. 9(2) condition a purpose relies on for special categories."""

    condition: str
    consent: str | None = None  # consent key each subject must hold (explicit consent)


@dataclass(frozen=True, slots=True)
class Purpose:
    """One declared purpose of processing."""

    key: str
    title: str
    data_use: str
    legal_basis: LegalBasis
    roles: frozenset[str]
    allowed: tuple[str, ...]
    prohibited: tuple[str, ...] = ()
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    consent: str | None = None
    art9: Art9 | None = None
    restricted_subjects: bool = False
    retention: str | None = None


@dataclass(frozen=True, slots=True)
class SubjectState:
    """What one data subject has said: active consents, objections, restriction."""

    consents: frozenset[str] = frozenset()
    objections: frozenset[str] = frozenset()
    restricted: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for a request, before looking at individual subjects."""

    purpose: str
    policy_version: str
    legal_basis: str | None
    fields: tuple[str, ...]  # returned, possibly transformed
    transforms: Mapping[str, Transform]
    denied: Mapping[str, str]  # field -> reason
    categories: tuple[str, ...]
    special: tuple[str, ...] = ()  # returned fields that are Art. 9 data
    art9: Art9 | None = None
    consent: str | None = None
    restricted_ok: bool = False
    error: str | None = None  # the whole request is refused (unknown purpose, role)

    @property
    def verdict(self) -> Verdict:
        """Allow, partial (some fields denied or masked) or deny (nothing returned)."""
        if self.error or not self.fields:
            return Verdict.DENY
        return Verdict.PARTIAL if self.denied or self.transforms else Verdict.ALLOW

    def subject_fields(self, state: SubjectState) -> tuple[tuple[str, ...], str | None]:
        """The fields one subject's data may be returned with, or why none may.

        Returns:
            (fields, reason): *reason* is set when the subject is excluded entirely.
        """
        if self.error:
            return (), self.error
        if state.restricted and not self.restricted_ok:
            return (), "subject_restricted"
        if self.purpose in state.objections:
            return (), "subject_objected"
        if self.consent is not None and self.consent not in state.consents:
            return (), "consent_missing"
        needed = self.art9.consent if self.art9 else None
        if needed is not None and needed not in state.consents:
            return tuple(f for f in self.fields if f not in self.special), None
        return self.fields, None


@dataclass(frozen=True, slots=True)
class PurposeTable:
    """All declared purposes, with the version and hash audited with every decision."""

    version: str
    digest: str
    purposes: Mapping[str, Purpose]

    @property
    def policy_version(self) -> str:
        """``version@sha256-prefix``: what audit events record."""
        return f"{self.version}@{self.digest[:16]}"

    def decide(self, purpose: str, roles: frozenset[str], fields: Mapping[str, str]) -> Decision:
        """Decide which of *fields* (name -> data category) an actor may read for *purpose*."""
        rule = self.purposes.get(purpose)
        categories = tuple(sorted(set(fields.values())))
        if rule is None or not roles & rule.roles:
            reason = "purpose_undeclared" if rule is None else "role_not_permitted"
            denied = dict.fromkeys(fields, reason)
            return Decision(
                purpose, self.policy_version, None, (), {}, denied, categories, error=reason
            )
        granted: list[str] = []
        transforms: dict[str, Transform] = {}
        denied = {}
        special: list[str] = []
        for name, category in fields.items():
            refusal = _field_refusal(rule, category)
            if refusal:
                denied[name] = refusal
                continue
            granted.append(name)
            transform = _longest_match(rule.transforms, category)
            if transform is not None:
                transforms[name] = transform
            if _matches_any(category, SPECIAL_CATEGORIES):
                special.append(name)
        return Decision(
            purpose=purpose,
            policy_version=self.policy_version,
            legal_basis=rule.legal_basis.value,
            fields=tuple(granted),
            transforms=transforms,
            denied=denied,
            categories=categories,
            special=tuple(special),
            art9=rule.art9 if special else None,
            consent=rule.consent,
            restricted_ok=rule.restricted_subjects,
        )


def _field_refusal(rule: Purpose, category: str) -> str | None:
    if _matches_any(category, rule.prohibited):
        return "category_prohibited"
    if not _matches_any(category, rule.allowed):
        return "category_not_allowed"
    if _matches_any(category, SPECIAL_CATEGORIES) and rule.art9 is None:
        return "art9_condition_missing"
    return None


def matches(category: str, prefix: str) -> bool:
    """Whether *category* is *prefix* or a descendant of it (dotted keys)."""
    return category == prefix or category.startswith(prefix + ".")


def _matches_any(category: str, prefixes: tuple[str, ...]) -> bool:
    return any(matches(category, p) for p in prefixes)


def _longest_match(transforms: Mapping[str, Transform], category: str) -> Transform | None:
    hits = [p for p in transforms if matches(category, p)]
    return transforms[max(hits, key=len)] if hits else None


def parse(text: str) -> PurposeTable:
    """Parse and check a purpose table.

    Raises:
        PolicyError: the table is malformed (unknown basis or transform, missing keys, a
            consent-based purpose without a consent key).
    """
    try:
        raw = tomllib.loads(text)
        purposes = {key: _purpose(key, body) for key, body in raw["purposes"].items()}
        version = str(raw["version"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"purpose table: {exc}") from exc
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    return PurposeTable(version, hashlib.sha256(canonical).hexdigest(), purposes)


def _purpose(key: str, body: dict[str, Any]) -> Purpose:
    basis = LegalBasis(body["legal_basis"])
    consent = body.get("consent")
    if (basis is LegalBasis.CONSENT) != (consent is not None):
        raise ValueError(f"{key}: a consent key goes with (and only with) basis consent")
    art9 = body.get("art9")
    return Purpose(
        key=key,
        title=str(body["title"]),
        data_use=str(body["data_use"]),
        legal_basis=basis,
        roles=frozenset(body["roles"]),
        allowed=tuple(body["allowed"]),
        prohibited=tuple(body.get("prohibited", ())),
        transforms={k: Transform(v) for k, v in body.get("transforms", {}).items()},
        consent=consent,
        art9=Art9(art9["condition"], art9.get("consent")) if art9 else None,
        restricted_subjects=bool(body.get("restricted_subjects", False)),
        retention=body.get("retention"),
    )


def default_table() -> PurposeTable:
    """The purpose table shipped with this release."""
    return parse(resources.files("privacy").joinpath("purposes.toml").read_text())
