"""The compose wiring, natively: secure broker + bridge workers + ``qnect api`` + database.

``deploy/compose.yaml`` cannot run here (no Docker engine), so this runs the same pieces as
processes with the same configuration: Mosquitto with the deploy security (dynamic security,
devices on TLS), ``qnect bridge --workers 2`` logged in as ``bridge`` with its metrics port,
``qnect api``, and a small simulated fleet over TLS. Then SIGTERM to the API: readiness first.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from qnect.local_broker import free_port
from tests.broker_bridge.stream import Stream, assert_complete, fleet
from tests.fix_bridge import bridge_env, count, qnect_json
from tests.fix_mqtt import SecureBroker
from tests.qnect.ops import api_process, get, scrape, total, wait_status


def test_broker_workers_api_and_database_run_together(
    db_dsn: str,
    root_key_file: Path,
    secure_broker: SecureBroker,
    secure_bridge_factory: Any,
    tmp_path: Path,
) -> None:
    """A TLS fleet is stored completely; API ready; bridge metrics agree; SIGTERM drains the API."""
    creds = fleet(db_dsn, root_key_file, 4)
    secure_broker.push(creds)
    port = free_port()
    bridge = secure_bridge_factory(workers=2, QNECT_METRICS_PORT=str(port))
    metrics = f"http://127.0.0.1:{port}"
    env = bridge_env(db_dsn, secure_broker, root_key_file, QNECT_API_DRAIN_S="1")
    with api_process(env, tmp_path / "api.log") as (api, proc):
        assert json.loads(wait_status(f"{api}/readyz")) == {"status": "ready"}
        assert json.loads(wait_status(f"{metrics}/readyz")) == {"status": "ready"}
        stream = Stream(creds, secure_broker.device_url, messages=20, bad_fraction=0.05, seed=5)
        stream.start()
        summary = stream.result(120)
        assert_complete(db_dsn, creds, summary)
        assert count(db_dsn, "SELECT count(*) FROM device_info") >= len(creds)  # MAC, IP, SSID
        stats = qnect_json("stats", "--json", env=env)
        deadline = time.monotonic() + 15
        while True:
            samples = scrape(f"{metrics}/metrics")
            if total(samples, "qnect_ingest_frames_total", result="accepted") == stats["accepted"]:
                break
            assert time.monotonic() < deadline, "bridge metrics never caught up with the tables"
            time.sleep(0.2)
        assert (
            total(samples, "qnect_ingest_frames_total", result="rejected")
            == (stats["rejected_total"])
        )
        assert total(samples, "qnect_devices_online") == len(creds)
        assert get(f"{api}/metrics")[0] == 200
        # SIGTERM: /readyz turns 503 while the API still answers, then it exits 0.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status, body = get(f"{api}/readyz")
        assert (status, json.loads(body)) == (503, {"status": "draining"})
        assert get(f"{api}/healthz")[0] == 200  # everything else is still served
        assert proc.wait(15) == 0
        elapsed = time.monotonic() - started
        print(f"api: SIGTERM to exit {elapsed:.2f} s (drain 1 s)")
        assert 1 <= elapsed < 10
    started = time.monotonic()
    assert bridge.stop() == 0
    print(f"bridge: SIGTERM to exit {time.monotonic() - started:.2f} s")
