"""The Art. 30 GDPR record of processing activities, generated from data (pure).

Owns the document the DPO hands a supervisory authority: one entry per purpose of the purpose
table (name, legal basis, Art. 9 condition, consent key, the data categories it may touch and
those it may not, who may invoke it, the transforms applied, how long each category it touches
is kept) and the categories actually stored (from the field registry, with retention and
whether they are encrypted). Nothing here is written by hand, so the record cannot drift from
what the gate enforces. Does not own the purpose table, the registry or retention numbers.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from privacy.fields import REGISTRY, FieldSpec
from privacy.purposes import PurposeTable, matches
from privacy.retention import RETENTION_DAYS

OWNER_LIFETIME = "until the account is erased"
MEASURES = (
    "personal fields encrypted per field under keys per data subject and data class",
    "erasure destroys the subject's keys (crypto-shredding)",
    "every read of personal data audited in the same transaction, hash-sealed and signed",
    "device traffic authenticated and encrypted under per-session keys over TLS",
    "role-based access with purpose decisions; masking and pseudonymisation per purpose",
)


def _stored() -> dict[str, dict[str, object]]:
    tables: dict[str, set[str]] = defaultdict(set)
    keep: dict[str, set[str]] = defaultdict(set)
    sealed: dict[str, bool] = defaultdict(lambda: True)
    for table, columns in REGISTRY.items():
        for spec in columns.values():
            for category in _personal(spec):
                tables[category].add(table)
                keep[category].add(_retention(spec))
                sealed[category] = sealed[category] and spec.key_class is not None
    return {
        c: {"tables": sorted(tables[c]), "retention": sorted(keep[c]), "encrypted": sealed[c]}
        for c in sorted(tables)
    }


def _personal(spec: FieldSpec) -> list[str]:
    return [c for c in spec.categories if c.startswith("user.")]


def _retention(spec: FieldSpec) -> str:
    if spec.retention is None:
        return OWNER_LIFETIME
    return f"{RETENTION_DAYS[spec.retention]} days"


def record_of_processing(table: PurposeTable, *, generated_at: datetime) -> dict[str, object]:
    """The Art. 30(1) record as JSON-ready data.

    Args:
        table: the purpose table in force.
        generated_at: when the record is produced (aware).

    Returns:
        The policy version, one activity per purpose, the stored categories and the measures.
    """
    stored = _stored()
    activities = []
    for key, p in sorted(table.purposes.items()):
        touched = [
            c
            for c in stored
            if any(matches(c, a) for a in p.allowed)
            and not any(matches(c, x) for x in p.prohibited)
        ]
        activities.append(
            {
                "purpose": key,
                "title": p.title,
                "data_use": p.data_use,
                "legal_basis": p.legal_basis.value,
                "art9_condition": p.art9.condition if p.art9 else None,
                "consent_key": p.consent or (p.art9.consent if p.art9 else None),
                "categories_allowed": list(p.allowed),
                "categories_prohibited": list(p.prohibited),
                "categories_stored": touched,
                "transforms": {k: v.value for k, v in sorted(p.transforms.items())},
                "recipients": [f"internal: {role}" for role in sorted(p.roles)],
                "retention": p.retention,
                "retention_by_category": {c: stored[c]["retention"] for c in touched},
                "reads_restricted_subjects": p.restricted_subjects,
            }
        )
    return {
        "policy_version": table.policy_version,
        "generated_at": generated_at.isoformat(),
        "activities": activities,
        "categories": stored,
        "security_measures": list(MEASURES),
    }
