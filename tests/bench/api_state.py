"""Benchmark (not a test): device-state read latency of ``qnect api`` under concurrent ingest.

Run: ``.venv/bin/python -m tests.bench.api_state [--clients 8] [--rate 4000] [--seconds 20]``

On a scratch database and a private Mosquitto with dynamic security (``qnect.bench.scratch``)
it provisions a fleet, gives some thermostats and plugs to an app user, starts ``qnect bridge``
and ``qnect api`` as processes, and lets the fleet do its key exchanges. Then, twice for the
same time: N clients read ``GET /v1/me/devices/{id}`` (a random device of the user's, one
keep-alive connection each, back to back) first alone, then while a load generator streams
sealed telemetry frames at a fixed rate through the broker into the bridge. It prints the
read latency percentiles, the reads per second and the ingest rate committed in the same
window side by side, and one JSON line at the end. Every read is a real one: token check,
household scoping, the privacy gate and its audit event in the same transaction.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from api.auth import hash_password
from api.tokens import LOGIN_INFO, derive_key, login_index
from crypto.keys import parse_root_key
from device_registry.postgres_accounts import PostgresAccounts
from qnect import bench
from qnect.local_broker import free_port
from qnect.rights import adopt, build

PASSWORD = "bench password, never reused"
OWNED_PER_MODEL = 25  # thermostats and plugs the app user owns (the read targets)


@dataclass
class Window:
    """What one measuring window saw."""

    latencies_ms: list[float]
    errors: int
    seconds: float
    frames: int


def _start_api(env: bench.Env, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qnect", "api", "--port", str(port)],
        env=env.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise TimeoutError("qnect api did not answer")


def _user(env: bench.Env) -> list[str]:
    """An app user owning some thermostats and plugs; returns their device ids."""
    root = parse_root_key(env.root_key_file.read_text())
    owned = [
        str(c["device_id"])
        for model in ("thermostat", "plug")
        for c in [c for c in env.creds if c["model"] == model][:OWNED_PER_MODEL]
    ]
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        subject = adopt(conn, build(root), owned, email="reader@bench.test")
    PostgresAccounts(env.dsn).create(
        login_hash=login_index(derive_key(root, LOGIN_INFO), "reader"),
        password_hash=hash_password(PASSWORD),
        role="user",
        subject_id=subject,
    )
    return owned


def _token(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = f"username=reader&password={PASSWORD.replace(' ', '+')}"
    conn.request(
        "POST", "/v1/auth/token", body, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    answer = conn.getresponse()
    return str(json.loads(answer.read())["access_token"])


def _reader(
    port: int, token: str, devices: list[str], stop: threading.Event, out: Window, seed: int
) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        started = time.perf_counter()
        conn.request("GET", f"/v1/me/devices/{rng.choice(devices)}", headers=headers)
        answer = conn.getresponse()
        answer.read()
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status == 200:
            out.latencies_ms.append(elapsed)  # list.append is atomic under the GIL
        else:
            out.errors += 1


def _publish(env: bench.Env, frames: list[bench.Frame], rate: float, stop: threading.Event) -> None:
    publisher = bench.FastPublisher(env.loadgen_url)
    started, i = time.perf_counter(), 0
    try:
        while i < len(frames) and not stop.is_set():
            due = min(len(frames), int((time.perf_counter() - started) * rate) + 1)
            for f in frames[i:due]:
                publisher.publish(f.topic, f.payload)
            i = due
            time.sleep(0.001)  # paced in 1 ms steps, as qnect.bench does
    finally:
        publisher.close()


def _window(
    env: bench.Env,
    port: int,
    token: str,
    devices: list[str],
    args: argparse.Namespace,
    *,
    frames: list[bench.Frame] | None,
) -> Window:
    out = Window([], 0, args.seconds, 0)
    stop = threading.Event()
    threads = [
        threading.Thread(target=_reader, args=(port, token, devices, stop, out, i), daemon=True)
        for i in range(args.clients)
    ]
    if frames is not None:
        threads.append(
            threading.Thread(target=_publish, args=(env, frames, args.rate, stop), daemon=True)
        )
    before = bench._scalar(env.dsn, "SELECT count(*) FROM frames")
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    out.frames = bench._scalar(env.dsn, "SELECT count(*) FROM frames") - before
    stop.set()
    for t in threads:
        t.join(60)
    return out


def _summary(w: Window) -> dict[str, float]:
    lat = sorted(w.latencies_ms)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else float("nan")

    return {
        "reads": len(lat),
        "reads_per_s": round(len(lat) / w.seconds),
        "read_errors": w.errors,
        "read_ms_p50": pct(0.50),
        "read_ms_p95": pct(0.95),
        "read_ms_p99": pct(0.99),
        "read_ms_max": round(lat[-1], 1) if lat else float("nan"),
        "ingest_msgs_per_s": round(w.frames / w.seconds),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both windows; returns the result object."""
    options = bench.BenchOptions(devices=args.devices, workers=args.workers)
    admin = os.environ.get("QNECT_DATABASE_URL", bench.LOCAL_DSN)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    with bench.scratch(admin, options, say) as env:
        bench._provision(env, options, say)
        devices = _user(env)
        bridge = bench.Bridge(env, args.workers)
        port = free_port()
        api = _start_api(env, port)
        try:
            bench._wait(lambda: len(bridge.worker_pids()) >= args.workers, 30, "workers")
            time.sleep(2.0)
            fleet = bench._sessions(env, say)
            frames = bench._seal(fleet, int(args.rate * (args.seconds + 5)))
            token = _token(port)
            _window(
                env,
                port,
                token,
                devices,
                argparse.Namespace(**{**vars(args), "seconds": 2}),
                frames=None,
            )  # warm-up
            idle = _summary(_window(env, port, token, devices, args, frames=None))
            say(f"reads alone: {idle}")
            time.sleep(1.0)
            loaded = _summary(_window(env, port, token, devices, args, frames=frames))
            say(f"reads under ingest: {loaded}")
        finally:
            api.terminate()
            api.wait(30)
            bridge.stop()
    return {
        "cores": os.cpu_count(),
        "clients": args.clients,
        "workers": args.workers,
        "devices": args.devices,
        "offered_ingest_msgs_per_s": args.rate,
        "seconds": args.seconds,
        "idle": idle,
        "under_ingest": loaded,
    }


def main() -> None:
    """Parse options, run, print a table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=8, help="concurrent readers")
    parser.add_argument("--rate", type=float, default=4000, help="offered ingest, frames/s")
    parser.add_argument("--seconds", type=float, default=20, help="each measuring window")
    parser.add_argument("--devices", type=int, default=500, help="sending devices")
    parser.add_argument("--workers", type=int, default=2, help="bridge worker processes")
    result = run(parser.parse_args())
    print(f"{'':24}{'reads alone':>14}{'under ingest':>14}")
    for key in result["idle"]:
        print(f"{key:24}{result['idle'][key]:>14}{result['under_ingest'][key]:>14}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
