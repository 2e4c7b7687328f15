"""The field registry: every stored column, its data categories, key class and retention (pure).

Owns the declaration that a test checks against the live schema: a column that exists in the
database but not here fails the suite, so a new personal column cannot slip in unlabelled
(the Fides "undeclared data categories" check). Columns that hold no personal data are declared
too, as ``system``, so that "undeclared" always means "nobody thought about it".
Series tables are declared once; their partitions and chunks inherit the declaration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crypto.keys import KeyClass
from privacy.categories import DataCategory as C
from privacy.retention import RetentionClass as R

_SYS = "system.operations"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What one column may hold."""

    categories: tuple[str, ...]
    key_class: KeyClass | None = None  # encrypted under this data key class
    retention: R | None = None  # None: lives as long as its row's owner

    @property
    def personal(self) -> bool:
        """Whether any category is about a person (``user.*``)."""
        return any(c.startswith("user.") for c in self.categories)


def _sys(retention: R | None = None) -> FieldSpec:
    return FieldSpec((_SYS,), None, retention)


def _enc(key_class: KeyClass, retention: R | None, *categories: str) -> FieldSpec:
    return FieldSpec(tuple(categories), key_class, retention)


_REF = FieldSpec((C.DEVICE_REF,))
_DEVICE_TIME = {"ts": _sys(), "epoch": _sys(), "counter": _sys()}


def _sealed(retention: R, key_class: KeyClass, *categories: str) -> dict[str, FieldSpec]:
    return {
        **_DEVICE_TIME,
        "device_id": _REF,
        "binding": _REF,
        "point": _sys(),
        "enc": _enc(key_class, retention, *categories),
    }


REGISTRY: dict[str, dict[str, FieldSpec]] = {
    "devices": {
        "device_id": _REF,
        "model": _sys(),
        "status": _sys(),
        "binding": _REF,
        "drk_version": _sys(),
        "root_key_wrapped": _sys(),
        "mac_enc": _enc(KeyClass.NETWORK, None, C.DEVICE_IDENTIFIER),
        "mac_bidx": FieldSpec((C.DEVICE_IDENTIFIER,)),  # truncated keyed hash, a lookup aid
        "current_epoch": _sys(),
        "created_at": _sys(),
        **{  # root-key rotation (0007): versions, wrapped keys and times, no personal data
            f"drk_{k}": _sys()
            for k in (
                "next_version",
                "next_wrapped",
                "next_offered_at",
                "prev_version",
                "prev_wrapped",
                "prev_until",
                "rotated_at",
            )
        },
    },
    "data_keys": {
        k: _sys() for k in ("owner", "key_class", "version", "state", "wrapped", "created_at")
    },
    "kek_versions": {k: _sys() for k in ("version", "state", "created_at", "retired_at")},
    "device_sessions": {
        "device_id": _REF,
        **{
            k: _sys()
            for k in (
                "epoch",
                "device_nonce",
                "server_nonce",
                "cid",
                "drk_version",
                "established_at",
                "superseded_at",
            )
        },
    },
    "device_state": {
        "device_id": _REF,
        "online": _sys(),
        "presence_epoch": _sys(),
        "since": _sys(),
        "last_seen": _sys(),
        "last_ts": _sys(),
        "latest": FieldSpec((C.DEVICE_TELEMETRY,), None, R.USAGE),
        "firmware": _sys(),
        "rssi": _sys(),
    },
    "quarantine": {
        "device_id": _REF,
        **{
            k: _sys(R.LEDGER)
            for k in (
                "id",
                "digest",
                "received_at",
                "last_seen_at",
                "kind",
                "reason",
                "detail",
                "size",
                "epoch",
                "counter",
                "occurrences",
            )
        },
    },
    "storage_layout": {"singleton": _sys(), "kind": _sys()},
    "bridge_sessions": {"client_id": _sys(), "last_start": _sys()},
    "schema_migrations": {"version": _sys(), "applied_at": _sys()},
    "frames": {**_DEVICE_TIME, "device_id": _REF, "kind": _sys(), "received_at": _sys()},
    "telemetry": {
        "ts": _sys(),
        "device_id": _REF,
        "point": _sys(),
        "value": FieldSpec((C.DEVICE_TELEMETRY,), None, R.USAGE),
    },
    "health_readings": _sealed(R.HEALTH, KeyClass.HEALTH, C.HEALTH),
    "location_readings": _sealed(R.LOCATION, KeyClass.LOCATION, C.LOCATION_PRECISE),
    "media_readings": _sealed(R.MEDIA, KeyClass.MEDIA, C.MEDIA),
    "device_info": _sealed(
        R.NETWORK, KeyClass.NETWORK, C.DEVICE_IDENTIFIER, C.IP_ADDRESS, C.NETWORK, _SYS
    ),
    "presence_events": {
        "ts": _sys(),
        "device_id": _REF,
        "epoch": _sys(),
        "online": _sys(),
        "source": _sys(),
    },
    "households": {"household_id": FieldSpec((C.ACCOUNT,)), "created_at": _sys()},
    "subjects": {
        "subject_id": FieldSpec((C.ACCOUNT,)),
        "household_id": FieldSpec((C.ACCOUNT,)),
        "email_enc": _enc(KeyClass.PROFILE, None, C.EMAIL),
        "name_enc": _enc(KeyClass.PROFILE, None, C.NAME),
        "restricted": FieldSpec((C.PRIVACY_PREFERENCES,)),
        "status": FieldSpec((C.ACCOUNT,)),
        "created_at": FieldSpec((C.ACCOUNT,)),
    },
    "bindings": {
        "binding": _REF,
        "device_id": _REF,
        "subject_id": FieldSpec((C.ACCOUNT,)),
        "household_id": FieldSpec((C.ACCOUNT,)),
        "bound_at": FieldSpec((C.ACCOUNT,)),
        "unbound_at": FieldSpec((C.ACCOUNT,)),
    },
    "consent_events": {
        "seq": _sys(),
        "subject_id": FieldSpec((C.ACCOUNT,)),
        "consent_key": FieldSpec((C.PRIVACY_PREFERENCES,)),
        "kind": FieldSpec((C.PRIVACY_PREFERENCES,)),
        "policy_version": _sys(),
        "source": FieldSpec((C.PRIVACY_PREFERENCES,)),
        "at": FieldSpec((C.PRIVACY_PREFERENCES,)),
    },
    "pairing_tokens": {
        "token_hash": _sys(),
        "subject_id": FieldSpec((C.ACCOUNT,)),
        "household_id": FieldSpec((C.ACCOUNT,)),
        **{k: _sys() for k in ("created_at", "expires_at", "used_at")},
        "device_id": _REF,
    },
    # Firmware and OTA campaigns (0010): fleet operations; the operator who acted by account id.
    "firmware_artifacts": {
        **{
            k: _sys()
            for k in [
                "artifact_id",
                "version",
                "seq",
                "models",
                "min_version",
                "size",
                "sha256",
                "manifest",
                "signature",
                "content",
                "created_at",
            ]
        },
        "created_by": FieldSpec((C.ACCOUNT,)),
    },
    "ota_campaigns": {
        **{
            k: _sys()
            for k in [
                "campaign_id",
                "name",
                "artifact_id",
                "model",
                "from_min",
                "from_max",
                "waves",
                "failure_threshold",
                "status",
                "current_wave",
                "wave_started_at",
                "halted_wave",
                "created_at",
                "finished_at",
            ]
        },
        "created_by": FieldSpec((C.ACCOUNT,)),
    },
    "ota_devices": {
        "device_id": _REF,
        **{
            k: _sys()
            for k in [
                "campaign_id",
                "wave",
                "state",
                "received",
                "reason",
                "offers",
                "offered_at",
                "updated_at",
            ]
        },
    },
    # API accounts (0009): the login name only as a keyed hash, the password only as Argon2id.
    "accounts": {
        "account_id": FieldSpec((C.ACCOUNT,)),
        "login_hash": FieldSpec((C.ACCOUNT,)),
        "password_hash": FieldSpec((C.ACCOUNT,)),
        "role": FieldSpec((C.ACCOUNT,)),
        "subject_id": FieldSpec((C.ACCOUNT,)),
        "oidc_subject": FieldSpec((C.ACCOUNT,)),
        **{k: FieldSpec((C.ACCOUNT,)) for k in ("disabled", "failed_logins", "locked_until")},
        "created_at": FieldSpec((C.ACCOUNT,)),
    },
    "refresh_tokens": {
        "token_hash": _sys(),
        "account_id": FieldSpec((C.ACCOUNT,)),
        **{k: _sys() for k in ("family_id", "issued_at", "expires_at", "used_at", "revoked_at")},
    },
    "device_shadows": {
        "device_id": _REF,
        "desired": FieldSpec((C.DEVICE_TELEMETRY,)),
        **{k: _sys() for k in ("version", "desired_at", "confirmed_at", "sent_version")},
        **{k: _sys() for k in ("sent_epoch", "sent_at", "plain_retained")},
    },
    "erasure_tombstones": {"subject_hash": _sys(), "request_id": _sys(), "erased_at": _sys()},
    "dsr_requests": {
        "request_id": _sys(),
        "subject_id": FieldSpec((C.ACCOUNT,)),
        **{k: _sys() for k in ("kind", "received_at", "due_at", "status", "completed_at")},
    },
    "audit_events": {
        k: FieldSpec((C.AUDIT,))
        for k in (
            "seq",
            "event_id",
            "ts",
            "actor_type",
            "actor_id",
            "actor_roles",
            "purpose",
            "legal_basis",
            "art9_condition",
            "policy_version",
            "action",
            "resource",
            "fields",
            "masked_fields",
            "denied_fields",
            "categories",
            "subject_refs",
            "decision",
            "result",
            "row_count",
            "reason",
            "key_ids",
            "entry_mac",
        )
    },
    "audit_seals": {
        k: _sys()
        for k in (
            "seal_no",
            "seqs",
            "leaf_count",
            "merkle_root",
            "prev_seal_hash",
            "seal_hash",
            "signature",
            "public_key",
            "sealed_at",
        )
    },
}


def spec(table: str, column: str) -> FieldSpec | None:
    """The declaration of one column, if any."""
    return REGISTRY.get(table, {}).get(column)


def undeclared(live: Iterable[tuple[str, str]]) -> list[str]:
    """Columns of the live schema (``(table, column)`` pairs) that the registry lacks."""
    return sorted(f"{t}.{c}" for t, c in live if spec(t, c) is None)


def personal_columns() -> list[str]:
    """Every declared column that can hold personal data."""
    return sorted(f"{t}.{c}" for t, cols in REGISTRY.items() for c, s in cols.items() if s.personal)
