"""The privacy gate and data-subject rights against data ingested through the real bridge.

A small fleet owned by three subjects in two households streams through a private Mosquitto
and a real ``qnect bridge`` into PostgreSQL; the tests then read, tamper with and erase that data
and look at the tables directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker_bridge.mqtt import BrokerAddress
from crypto.keys import KeyClass, parse_root_key
from device_registry.model import RegistryKeys, open_record
from device_registry.postgres import load_records, provision, rotate_kek
from device_registry.postgres_owners import assign_device
from device_registry.views import ACCOUNT, DEVICES, HEALTH, LOCATION, VIEWS
from privacy.audit import subject_ref
from privacy.errors import AccessDenied, AuditUnavailable
from privacy.fields import undeclared
from privacy.postgres import (
    create_household,
    create_subject,
    live_columns,
    open_data_keys,
    pseudonym_keys,
)
from privacy.postgres_audit import verify
from privacy.postgres_gate import Actor, Scope
from privacy.purposes import Verdict
from qnect import simulator
from qnect.rights import Privacy, build
from tests.fix_bridge import Bridge, bridge_env
from tests.fix_mqtt import Broker

DPO = Actor("staff", "dpo-1", frozenset({"dpo"}))
SUPPORT = Actor("staff", "support-7", frozenset({"support"}))
MARKETING = Actor("service", "newsletter", frozenset({"marketing"}))


@dataclass
class World:
    """The module's fleet, owners and wiring."""

    dsn: str
    privacy: Privacy
    keys: RegistryKeys
    subjects: dict[str, str]  # alice, bob, carol -> subject id
    devices: dict[str, dict[str, Any]]  # name -> credentials

    def owner(self, name: str) -> Actor:
        """The end user *name* acting in the app."""
        return Actor("subject", self.subjects[name], frozenset({"subject"}))


@pytest.fixture(scope="module")
def world(
    db_dsn: str, broker: Broker, root_key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> World:
    """Provision, pair, consent and stream; the bridge stops before the tests run."""
    root = parse_root_key(root_key_file.read_text())
    keys = RegistryKeys.from_root_key(root)
    privacy = build(root)
    devices: dict[str, dict[str, Any]] = {}
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for model in ("scale", "cleaner", "plug"):
            for n, cred in enumerate(provision(conn, keys, model, 2), 1):
                devices[f"{model}{n}"] = cred.to_json()
        h1, h2 = create_household(conn), create_household(conn)
        kek = privacy.ring.kek(1)
        subjects = {
            "alice": create_subject(conn, kek, h1, email="alice@example.com", name="Alice A"),
            "bob": create_subject(conn, kek, h1, email="bob@example.org", name="Bob B"),
            "carol": create_subject(conn, kek, h2, email="carol@example.net", name=None),
        }
        rights = privacy.rights
        for name in ("alice", "carol"):
            rights.consent(
                conn,
                Actor("subject", subjects[name], frozenset({"subject"})),
                subjects[name],
                "health",
                "grant",
                "app",
            )
        rights.consent(conn, DPO, subjects["alice"], "marketing", "grant", "app")
        rights.consent(conn, DPO, subjects["carol"], "precise_location", "grant", "app")
        owners = {
            "scale1": "alice",
            "cleaner1": "alice",
            "plug1": "alice",
            "plug2": "bob",
            "scale2": "carol",
            "cleaner2": "carol",
        }
        for device, owner in owners.items():
            assign_device(conn, keys.ring, devices[device]["device_id"], subjects[owner])
    bridge = Bridge(bridge_env(db_dsn, broker, root_key_file), 1)
    bridge.log_path = tmp_path_factory.mktemp("bridge") / "bridge.log"
    bridge.start()
    bridge.wait_workers()
    try:
        summary = simulator.run_fleet(
            list(devices.values()), BrokerAddress.parse(broker.url), messages=10, seed=5
        )
        assert summary["unconfirmed"] == 0, summary
    finally:
        assert bridge.stop() == 0
    return World(db_dsn, privacy, keys, subjects, devices)


@pytest.fixture
def db(world: World) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the module's database."""
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        yield conn


def _events(conn: psycopg.Connection[Any], ref: bytes) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT purpose, decision, result, actor_id, fields, masked_fields, denied_fields "
        "FROM audit_events WHERE subject_refs @> ARRAY[%s]::bytea[] ORDER BY seq",
        (ref,),
    ).fetchall()


def _ref(world: World, conn: psycopg.Connection[Any], name: str) -> bytes:
    sid = world.subjects[name]
    return subject_ref(pseudonym_keys(conn, world.privacy.ring, [sid])[sid], sid)


def test_owner_reads_own_devices_and_health(world: World, db: psycopg.Connection[Any]):
    """An owner reads their devices (full MAC) and health readings under provide_service."""
    gate, alice = world.privacy.gate, world.owner("alice")
    devices = gate.read(db, alice, "provide_service", DEVICES, Scope([alice.actor_id]))
    macs = {r["device_id"]: r["mac"] for r in devices.rows}
    for name in ("scale1", "cleaner1", "plug1"):
        cred = world.devices[name]
        assert macs[cred["device_id"]] == cred["mac"]
    health = gate.read(db, alice, "provide_service", HEALTH, Scope([alice.actor_id]))
    assert health.verdict is Verdict.ALLOW
    assert len(health.rows) == 10 * 4  # ten frames of four sealed points
    assert all(
        20 <= float(str(r["value"])) <= 300 for r in health.rows if r["point"] == "weight_kg"
    )
    assert health.undecryptable == 0


def test_positions_are_coarse_unless_precise_location_was_consented(
    world: World, db: psycopg.Connection[Any]
):
    """Alice's cleaner positions are stored on a 2 m grid; carol consented to precise ones."""
    gate = world.privacy.gate

    def positions(name: str) -> list[float]:
        sid = world.subjects[name]
        rows = gate.read(db, world.owner(name), "provide_service", LOCATION, Scope([sid])).rows
        return [float(str(r["value"])) for r in rows]

    coarse, precise = positions("alice"), positions("carol")
    assert len(coarse) == len(precise) == 20
    assert all(v % 2 == 0 for v in coarse)
    assert not all(v % 2 == 0 for v in precise)


def test_an_unowned_scale_has_no_health_key(world: World, db: psycopg.Connection[Any]):
    """Provisioning gives no health key: only an owner's explicit consent creates one."""
    cred = provision(db, world.keys, "scale", 1)[0]
    classes = {
        r[0]
        for r in db.execute(
            "SELECT k.key_class FROM data_keys k JOIN devices d ON d.binding = k.owner "
            "WHERE d.device_id = %s",
            (cred.device_id,),
        )
    }
    assert int(KeyClass.NETWORK) in classes
    assert int(KeyClass.HEALTH) not in classes


def test_marketing_without_consent_gets_nothing_and_a_deny_is_audited(
    world: World, db: psycopg.Connection[Any]
):
    """Marketing reads alice (consented) but nothing of bob; bob's exclusion is audited."""
    gate, ids = world.privacy.gate, world.subjects
    bob_only = gate.read(db, MARKETING, "marketing", ACCOUNT, Scope([ids["bob"]]))
    assert bob_only.rows == []
    assert bob_only.verdict is Verdict.DENY
    assert bob_only.excluded == {"consent_missing": 1}
    purpose, decision, result, actor, *_ = _events(db, _ref(world, db, "bob"))[-1]
    assert (purpose, decision, actor) == ("marketing", "deny", "newsletter")
    assert "consent_missing" in result
    both = gate.read(db, MARKETING, "marketing", ACCOUNT, Scope([ids["alice"], ids["bob"]]))
    assert [r["subject_id"] for r in both.rows] == [ids["alice"]]
    assert both.rows[0]["email"] == "alice@example.com"
    assert "restricted" not in both.rows[0]  # privacy preferences are not marketing's


def test_withdrawal_takes_effect_on_the_next_read(world: World, db: psycopg.Connection[Any]):
    """Withdrawing marketing consent excludes the subject from the very next read."""
    gate, rights, alice = world.privacy.gate, world.privacy.rights, world.subjects["alice"]
    assert gate.read(db, MARKETING, "marketing", ACCOUNT, Scope([alice])).rows
    rights.consent(db, world.owner("alice"), alice, "marketing", "withdraw", "app")
    after = gate.read(db, MARKETING, "marketing", ACCOUNT, Scope([alice]))
    assert after.rows == []
    assert after.excluded == {"consent_missing": 1}
    rights.consent(db, world.owner("alice"), alice, "marketing", "grant", "app")


def test_support_sees_a_masked_mac_and_no_health(world: World, db: psycopg.Connection[Any]):
    """Customer support gets the MAC masked, and the health view is refused field by field."""
    gate, alice = world.privacy.gate, world.subjects["alice"]
    result = gate.read(db, SUPPORT, "customer_support", DEVICES, Scope([alice]), reason="T-1234")
    assert result.masked == ("mac",)
    for row in result.rows:
        real = next(c["mac"] for c in world.devices.values() if c["device_id"] == row["device_id"])
        assert row["mac"] == "**:**:**:**:" + real[-5:]
        assert real not in str(result.rows)
    health = gate.read(db, SUPPORT, "customer_support", HEALTH, Scope([alice]), reason="T-1234")
    assert all("value" not in r for r in health.rows)
    assert health.denied == {"value": "category_prohibited"}
    rows = db.execute(
        "SELECT masked_fields, reason FROM audit_events WHERE actor_id = 'support-7' ORDER BY seq"
    ).fetchall()
    assert rows[0] == (["mac"], "T-1234")


def test_undeclared_purpose_is_refused_and_audited(world: World, db: psycopg.Connection[Any]):
    """A purpose that is not in the table raises AccessDenied and leaves a deny event."""
    with pytest.raises(AccessDenied):
        world.privacy.gate.read(db, SUPPORT, "curiosity", ACCOUNT, Scope([world.subjects["bob"]]))
    purpose, decision, result, *_ = _events(db, _ref(world, db, "bob"))[-1]
    assert (purpose, decision, result) == ("curiosity", "deny", "denied:purpose_undeclared")


def test_restricted_subject_is_readable_only_for_legal_compliance(
    world: World, db: psycopg.Connection[Any]
):
    """Art. 18: after restriction, the owner's own app read is refused; the DPO's is not."""
    gate, rights, carol = world.privacy.gate, world.privacy.rights, world.subjects["carol"]
    rights.restrict(db, DPO, carol)
    try:
        own = gate.read(db, world.owner("carol"), "provide_service", DEVICES, Scope([carol]))
        assert own.rows == []
        assert own.excluded == {"subject_restricted": 1}
        support = gate.read(db, SUPPORT, "customer_support", ACCOUNT, Scope([carol]))
        assert support.rows == []
        dpo = gate.read(db, DPO, "legal_compliance", DEVICES, Scope([carol]))
        assert len(dpo.rows) == 2
    finally:
        rights.restrict(db, DPO, carol, restricted=False)


def test_failing_audit_insert_returns_no_data(world: World, db: psycopg.Connection[Any]):
    """If the audit event cannot be written, the read raises and returns nothing."""
    db.execute(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit store full'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
    )
    before = db.execute("SELECT count(*) FROM audit_events").fetchone()
    try:
        with pytest.raises(AuditUnavailable):
            world.privacy.gate.read(
                db,
                world.owner("alice"),
                "provide_service",
                HEALTH,
                Scope([world.subjects["alice"]]),
            )
    finally:
        db.execute("DROP TRIGGER refuse_audit ON audit_events")
        db.execute("DROP FUNCTION refuse_audit()")
    assert db.execute("SELECT count(*) FROM audit_events").fetchone() == before


def test_moved_ciphertext_does_not_decrypt(world: World):
    """A ciphertext copied to another row, column or owner does not open."""
    gate, ids = world.privacy.gate, world.subjects
    with psycopg.connect(world.dsn) as conn:  # one transaction, rolled back at the end
        # another row: the first health reading's ciphertext over the second's
        conn.execute(
            "UPDATE health_readings SET enc = (SELECT enc FROM health_readings "
            "ORDER BY binding, epoch, counter, point LIMIT 1) "
            "WHERE (binding, epoch, counter, point) = (SELECT binding, epoch, counter, point "
            "FROM health_readings ORDER BY binding, epoch, counter, point OFFSET 1 LIMIT 1)"
        )
        # another column: alice's e-mail into her name; another owner: alice's e-mail to bob
        conn.execute(
            "UPDATE subjects SET name_enc = email_enc WHERE subject_id = %s", (ids["alice"],)
        )
        conn.execute(
            "UPDATE subjects SET email_enc = (SELECT email_enc FROM subjects "
            "WHERE subject_id = %s) WHERE subject_id = %s",
            (ids["alice"], ids["bob"]),
        )
        account = gate.read(
            conn, DPO, "legal_compliance", ACCOUNT, Scope([ids["alice"], ids["bob"]])
        )
        by_id = {r["subject_id"]: r for r in account.rows}
        assert by_id[ids["alice"]]["email"] == "alice@example.com"
        assert by_id[ids["alice"]]["name"] is None
        assert by_id[ids["bob"]]["email"] is None
        assert by_id[ids["bob"]]["name"] == "Bob B"
        assert account.undecryptable == 2
        health = gate.read(
            conn, DPO, "legal_compliance", HEALTH, Scope([ids["alice"], ids["carol"]])
        )
        assert health.undecryptable == 1
        assert sum(r["value"] is None for r in health.rows) == 1
        conn.rollback()


def test_field_registry_covers_the_live_schema(world: World, db: psycopg.Connection[Any]):
    """Every column is declared; a new personal column in a throwaway table is caught."""
    assert undeclared(live_columns(db)) == []
    db.execute("CREATE TABLE throwaway_contacts (id bigint, owner_email text)")
    try:
        assert undeclared(live_columns(db)) == [
            "throwaway_contacts.id",
            "throwaway_contacts.owner_email",
        ]
    finally:
        db.execute("DROP TABLE throwaway_contacts")


def test_export_contains_everything_and_who_read_it(world: World, db: psycopg.Connection[Any]):
    """Art. 15/20: the export has account, devices, series, consents and the reads of my data."""
    carol = world.subjects["carol"]
    export: Any = world.privacy.rights.export(db, world.owner("carol"), carol)
    assert export["account"][0]["email"] == "carol@example.net"
    assert {d["device_id"] for d in export["devices"]} == {
        world.devices["scale2"]["device_id"],
        world.devices["cleaner2"]["device_id"],
    }
    assert len(export["health_readings"]) == 40
    assert len(export["location_readings"]) == 20
    assert len(export["telemetry"]) == 10 * 2  # cleaner: battery and state
    assert {c["key"] for c in export["consents"]} == {"health", "precise_location"}
    readers = {(e["actor_id"], e["purpose"]) for e in export["reads_of_my_data"]}
    assert ("dpo-1", "legal_compliance") in readers
    assert "carol@example.net" not in str(export["reads_of_my_data"])


def test_health_withdrawal_shreds_health_data(world: World, db: psycopg.Connection[Any]):
    """Withdrawing Art. 9 consent destroys the health keys and deletes the readings."""
    carol = world.subjects["carol"]
    scale = world.devices["scale2"]["device_id"]
    world.privacy.rights.consent(db, world.owner("carol"), carol, "health", "withdraw", "app")
    assert db.execute(
        "SELECT count(*) FROM health_readings WHERE device_id = %s", (scale,)
    ).fetchone() == (0,)
    states = db.execute(
        "SELECT k.state, k.wrapped IS NULL FROM data_keys k JOIN bindings b ON b.binding = k.owner "
        "WHERE b.subject_id = %s AND k.key_class = %s",
        (carol, int(KeyClass.HEALTH)),
    ).fetchall()
    assert states
    assert all(s == ("destroyed", True) for s in states)
    readings = world.privacy.gate.read(
        db, world.owner("carol"), "provide_service", HEALTH, Scope([carol])
    )
    assert readings.rows == []


def test_kek_rotation_leaves_every_field_readable(world: World, db: psycopg.Connection[Any]):
    """After rewrapping every data key under a new KEK, every view reads the same values."""
    ids = list(world.subjects.values())
    gate = world.privacy.gate

    def everything() -> dict[str, list[dict[str, object]]]:
        out = {}
        for name, view in VIEWS.items():
            result = gate.read(db, DPO, "legal_compliance", view, Scope(ids))
            assert result.undecryptable == 0
            out[name] = result.rows
        return out

    before = everything()
    rotated = rotate_kek(db, world.privacy.ring, rand=os.urandom)
    assert rotated.rewrapped > 0
    assert db.execute(
        "SELECT count(*) FROM data_keys WHERE wrapped IS NOT NULL "
        "AND get_byte(wrapped, 1) * 256 + get_byte(wrapped, 2) <> %s",
        (rotated.version,),
    ).fetchone() == (0,)
    assert everything() == before


def test_erasure_leaves_nothing_readable(world: World, db: psycopg.Connection[Any]):
    """After erasure: rows gone, no field of the subject decrypts, a tombstone exists."""
    alice = world.subjects["alice"]
    bindings = [
        r[0] for r in db.execute("SELECT binding FROM bindings WHERE subject_id = %s", (alice,))
    ]
    kept = db.execute(  # a copy of a ciphertext, as a backup would keep it
        "SELECT binding FROM health_readings WHERE binding = ANY(%s) LIMIT 1", (bindings,)
    ).fetchone()
    assert kept is not None
    report = world.privacy.rights.erase(db, DPO, alice)
    assert report.rows_deleted > 0
    assert report.devices_released == 3
    for table in ("health_readings", "location_readings", "device_info"):
        assert db.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE binding = ANY(%s)").format(
                sql.Identifier(table)
            ),
            (bindings,),
        ).fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM subjects WHERE subject_id = %s", (alice,)
    ).fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM consent_events WHERE subject_id = %s", (alice,)
    ).fetchone() == (0,)
    assert (
        open_data_keys(db, world.privacy.ring, [(b, c) for b in bindings for c in KeyClass]) == {}
    )
    assert open_data_keys(db, world.privacy.ring, [(alice, c) for c in KeyClass]) == {}
    assert db.execute("SELECT count(*) FROM erasure_tombstones").fetchone() == (1,)
    assert db.execute(
        "SELECT count(*) FROM erasure_tombstones WHERE subject_hash = %s",
        (world.privacy.rights.tombstone(alice),),
    ).fetchone() == (1,)
    # the released devices keep working: new unowned bindings, MAC still opens
    ids = [world.devices[n]["device_id"] for n in ("scale1", "cleaner1", "plug1")]
    for device_id, record in load_records(db, ids).items():
        context = open_record(record, world.keys.ring)
        assert context is not None
        assert context.registered_mac == next(
            c["mac"] for c in world.devices.values() if c["device_id"] == device_id
        )
        assert record.binding not in bindings


def test_a_restored_backup_is_erased_again(world: World, db: psycopg.Connection[Any]):
    """A subject brought back by a backup restore is found by its tombstone and erased."""
    alice = world.subjects["alice"]
    row = db.execute("SELECT household_id FROM households LIMIT 1").fetchone()
    assert row is not None
    db.execute(
        "INSERT INTO subjects (subject_id, household_id, email_enc) VALUES (%s, %s, %s)",
        (alice, row[0], b"restored-ciphertext"),
    )
    assert world.privacy.rights.reapply_tombstones(db, DPO) == [alice]
    assert db.execute(
        "SELECT count(*) FROM subjects WHERE subject_id = %s", (alice,)
    ).fetchone() == (0,)
    assert world.privacy.rights.reapply_tombstones(db, DPO) == []


def test_audit_trail_verifies_after_everything(world: World, db: psycopg.Connection[Any]):
    """All the reads and rights above left an intact, verifiable audit trail."""
    report = verify(db, world.privacy.audit_keys)
    assert report.ok, report
