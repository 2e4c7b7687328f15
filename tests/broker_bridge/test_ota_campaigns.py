"""Staged OTA campaigns end to end: a real Mosquitto, a real bridge, PostgreSQL, 500 devices.

One fleet of 500 simulated plugs stays connected for the module; each test runs a campaign
on it (or on a few of its devices) through the registry, the bridge workers' controller and
offers, sealed downlink chunks and ``up/ota`` progress through the ingest pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker_bridge.mqtt import BrokerAddress
from broker_bridge.ota_frames import Offer, ota_topic, seal_message
from crypto.firmware import (
    Manifest,
    artifact_digest,
    new_release_key,
    public_bytes,
    sign_manifest,
)
from crypto.keys import parse_root_key
from device_registry.errors import FirmwareRejected
from device_registry.model import RegistryKeys
from device_registry.postgres import provision
from device_registry.postgres_firmware import CampaignSpec, create_campaign, upload
from qnect.sim_ota import OtaFleet
from tests.fix_bridge import Bridge, bridge_env, count
from tests.fix_mqtt import Broker

DEVICES = 500
RELEASE = new_release_key()
IMAGE_BYTES = 3000  # three 1 KiB chunks: small, but the download really is chunked
OTA_ENV = {
    "QNECT_OTA_RELEASE_PUBKEY": public_bytes(RELEASE).hex(),
    "QNECT_OTA_TICK_S": "0.2",  # fast wave timers for the test
    "QNECT_OTA_OFFER_RETRY_S": "3",
    "QNECT_OTA_DEVICE_TIMEOUT_S": "60",
    "QNECT_OTA_CHUNK_BYTES": "1024",
}


@pytest.fixture(scope="module")
def env(
    db_dsn: str, broker: Broker, root_key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """500 plugs provisioned and connected, one bridge worker with fast OTA timers."""
    keys = RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))
    with psycopg.connect(db_dsn) as conn:
        creds = [c.to_json() for c in provision(conn, keys, "plug", DEVICES)]
    bridge = Bridge(bridge_env(db_dsn, broker, root_key_file, **OTA_ENV), 1)
    bridge.log_path = tmp_path_factory.mktemp("bridge") / "bridge.log"
    bridge.start()
    bridge.wait_workers()
    fleet = OtaFleet(creds, BrokerAddress.parse(broker.url), public_bytes(RELEASE), seed=6)
    fleet.start()
    wait(db_dsn, "SELECT count(*) FROM device_state WHERE firmware = '1.4.2'", DEVICES)
    yield {"dsn": db_dsn, "fleet": fleet, "ids": [c["device_id"] for c in creds]}
    fleet.stop()
    bridge.stop()


def wait(dsn: str, query: str, expected: int, timeout: float = 120) -> None:
    """Wait until a count query returns *expected*."""
    deadline = time.monotonic() + timeout
    while (got := count(dsn, query)) != expected:
        assert time.monotonic() < deadline, f"{query!r} stayed {got}, not {expected}"
        time.sleep(0.2)


def release(dsn: str, version: str, seq: int, *, min_version: str = "1.0.0") -> int:
    """Sign and upload an image; returns its artifact id."""
    image = version.encode() * (IMAGE_BYTES // len(version)) + b"\0" * (IMAGE_BYTES % len(version))
    manifest = Manifest(version, seq, ("plug",), min_version, len(image), artifact_digest(image))
    signed = sign_manifest(RELEASE, manifest)
    with psycopg.connect(dsn, autocommit=True) as conn:
        art = upload(
            conn,
            signed.blob,
            signed.signature,
            image,
            release_key=public_bytes(RELEASE),
            actor="test",
        )
    return art.artifact_id


def start(dsn: str, artifact_id: int, **kw: Any) -> int:
    """Create a campaign over plugs; returns its id."""
    spec = CampaignSpec(
        kw.pop("name", "test"),
        artifact_id,
        "plug",
        kw.pop("from_min", "1.0.0"),
        kw.pop("from_max", "99.0.0"),
        **kw,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        return create_campaign(conn, spec, actor="test", now=datetime.now(UTC))


def finished(dsn: str, campaign_id: int, timeout: float = 180) -> str:
    """Wait until the campaign is final and none of its devices is under way; its status."""
    query = (
        "SELECT (c.status IN ('halted', 'completed', 'aborted'))::int "  # noqa: S608
        "* (1 - least(1, count(o.*))) FROM ota_campaigns c LEFT JOIN ota_devices o "
        "ON o.campaign_id = c.campaign_id "
        "AND o.state IN ('offered', 'downloading', 'verifying', 'installing') "
        f"WHERE c.campaign_id = {int(campaign_id)} GROUP BY c.status"
    )
    wait(dsn, query, 1, timeout)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT status FROM ota_campaigns WHERE campaign_id = %s", (campaign_id,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def waves(dsn: str, campaign_id: int) -> list[dict[str, int]]:
    """{state: n} per wave."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT wave, state, count(*) FROM ota_devices WHERE campaign_id = %s "
            "GROUP BY 1, 2 ORDER BY 1",
            (campaign_id,),
        ).fetchall()
    out: dict[int, dict[str, int]] = {}
    for wave, state, n in rows:
        out.setdefault(wave, {})[state] = n
    return [out.get(i, {}) for i in range(max(out) + 1)]


def test_campaign_with_failing_devices_halts_at_the_first_wave_over_threshold(
    env: dict[str, Any],
) -> None:
    """500 devices, 5 % fail to install, threshold 2 %: halts at the first wave over it."""
    dsn, fleet = env["dsn"], env["fleet"]
    failing = set(fleet.agents)
    for device_id in sorted(failing)[: DEVICES * 5 // 100]:
        fleet.agents[device_id].fail_install = True
    artifact = release(dsn, "2.0.0", 2)
    started = time.monotonic()
    campaign = start(
        dsn, artifact, from_max="1.9.9", waves=(1, 10, 50, 100), failure_threshold=0.02
    )
    assert finished(dsn, campaign) == "halted"
    took = time.monotonic() - started
    per_wave = waves(dsn, campaign)
    sizes = [sum(w.values()) for w in per_wave]
    assert sizes == [5, 45, 200, 250]
    rates = [(w.get("failed", 0) + w.get("timed_out", 0)) / sum(w.values()) for w in per_wave]
    first_over = next(i for i, r in enumerate(rates) if r > 0.02)
    with psycopg.connect(dsn) as conn:
        halted = conn.execute(
            "SELECT halted_wave FROM ota_campaigns WHERE campaign_id = %s", (campaign,)
        ).fetchone()
    assert halted == (first_over,), (rates, per_wave)
    for wave in per_wave[:first_over]:  # earlier waves finished within the threshold
        assert set(wave) <= {"succeeded", "failed"}
    for wave in per_wave[first_over + 1 :]:  # later waves were never offered
        assert set(wave) == {"cancelled"}
    assert all(r == "install_failed" for a in fleet.agents.values() for r in a.refused)
    print(f"halted at wave {first_over} (rates {rates}) after {took:.1f} s")
    for agent in fleet.agents.values():
        agent.fail_install = False


def test_clean_campaign_completes_with_every_device_on_the_new_version(
    env: dict[str, Any],
) -> None:
    """All 500 devices (on 1.4.2 or 2.0.0) get 2.1.0 and report it in their info frames."""
    dsn = env["dsn"]
    artifact = release(dsn, "2.1.0", 3)
    started = time.monotonic()
    campaign = start(dsn, artifact, from_max="2.0.0", waves=(1, 10, 50, 100))
    assert finished(dsn, campaign) == "completed"
    took = time.monotonic() - started
    per_wave = waves(dsn, campaign)
    assert [sum(w.values()) for w in per_wave] == [5, 45, 200, 250]
    assert all(set(w) == {"succeeded"} for w in per_wave)
    wait(dsn, "SELECT count(*) FROM device_state WHERE firmware = '2.1.0'", DEVICES, 30)
    with psycopg.connect(dsn) as conn:
        rejects = conn.execute("SELECT kind, reason, count(*) FROM quarantine GROUP BY 1, 2")
        assert rejects.fetchall() == []
    print(f"clean campaign over {DEVICES} devices in {took:.1f} s")


def test_bad_signature_and_lower_sequence_are_refused(env: dict[str, Any]) -> None:
    """Server: an older seq at upload; devices: a tampered manifest and an older signed one."""
    dsn, fleet, ids = env["dsn"], env["fleet"], env["ids"]
    with pytest.raises(FirmwareRejected) as info:
        release(dsn, "2.2.0", 1)
    assert info.value.reason == "seq_not_increasing"
    # A compromised database swaps the manifest: the devices refuse and the wave halts.
    tampered = release(dsn, "50.0.0", 10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE firmware_artifacts SET manifest = convert_to(replace(convert_from("
            "manifest, 'UTF8'), '50.0.0', '51.0.0'), 'UTF8') WHERE artifact_id = %s",
            (tampered,),
        )
    subset = tuple(ids[:3])
    c1 = start(dsn, tampered, devices=subset, waves=(100,), failure_threshold=0.0)
    assert finished(dsn, c1) == "halted"
    assert waves(dsn, c1) == [{"failed": 3}]
    assert all(fleet.agents[d].refused[-1:] == ["bad_signature"] for d in subset)
    # An offer forged with another key straight onto a device's downlink: refused too.
    device = fleet.agents[ids[3]].device
    forged = sign_manifest(
        new_release_key(), Manifest("60.0.0", 99, ("plug",), "1.0.0", 1, b"\0" * 32)
    )
    keys = device.sessions[device.epoch]
    frame = seal_message(
        keys, device.device_id, Offer(999, forged.blob, forged.signature, 1024), counter=7
    )
    device.publish(ota_topic(device.device_id), frame)
    deadline = time.monotonic() + 10
    while fleet.agents[ids[3]].refused[-1:] != ["bad_signature"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Anti-rollback: 70.0.0 is signed with seq 11, then 60.0.0 with seq 12 is installed; the
    # older release (a higher version, a lower sequence) is refused by the devices.
    old = release(dsn, "70.0.0", 11)
    new = release(dsn, "60.0.0", 12)
    subset = tuple(ids[4:7])
    c2 = start(dsn, new, devices=subset, waves=(100,))
    assert finished(dsn, c2) == "completed"
    c3 = start(dsn, old, devices=subset, waves=(100,), failure_threshold=0.0)
    assert finished(dsn, c3) == "halted"
    assert waves(dsn, c3) == [{"failed": 3}]
    assert all(fleet.agents[d].refused[-1:] == ["rollback_seq"] for d in subset)
    assert all(fleet.agents[d].flash.firmware == "60.0.0" for d in subset)


def test_device_rebooted_mid_download_resumes_and_finishes(env: dict[str, Any]) -> None:
    """Power lost after the first chunk: reconnects, asks from its offset, installs."""
    dsn, fleet, ids = env["dsn"], env["fleet"], env["ids"]
    agent = fleet.agents[ids[10]]
    agent.reboot_at = 1024
    reboots, received = agent.reboots, agent.bytes_received
    artifact = release(dsn, "80.0.0", 20)
    campaign = start(dsn, artifact, devices=(ids[10],), waves=(100,))
    assert finished(dsn, campaign) == "completed"
    assert agent.flash.firmware == "80.0.0"
    assert agent.reboots - reboots == 2  # the power loss, then booting the new image
    assert agent.bytes_received - received == IMAGE_BYTES  # resumed: no byte fetched twice
    query = "SELECT count(*) FROM device_state WHERE firmware = '80.0.0' AND device_id = "
    wait(dsn, query + f"'{ids[10]}'", 1)
