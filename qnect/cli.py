"""The ``qnect`` command line (Typer). Settings are read from the environment once per command."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.progress import Progress

from broker_bridge.errors import BrokerAdminError
from broker_bridge.mqtt import BrokerAddress
from crypto.errors import CryptoError
from device_registry.postgres import find_by_mac, provision, rotate_kek
from device_registry.profiles import MODELS
from privacy.audit import AuditKeys
from privacy.postgres_audit import seal_pending
from privacy.postgres_audit import verify as verify_audit
from qnect import api_server, bench, broker, local_broker, simulator
from qnect.bridge import supervise
from qnect.cli_accounts import account_app
from qnect.cli_auth import auth_hook
from qnect.cli_broker import broker_app
from qnect.cli_keys import register as register_key_rotation
from qnect.cli_ota import ota_app
from qnect.cli_pairing import pairing_app
from qnect.cli_privacy import privacy_app, subject_app
from qnect.local_tls import ensure_local_tls
from qnect.logs import configure
from qnect.migrate import layout, migrate
from qnect.rights import adopt, build
from qnect.settings import Settings, create_root_key_file
from qnect.stats import device_stats, stats
from telemetry.postgres_layout import reconcile_retention

app = typer.Typer(
    help="Qnect cloud ingestion backend.", no_args_is_help=True, pretty_exceptions_enable=False
)
keys_app = typer.Typer(help="Key management.", no_args_is_help=True)
device_app = typer.Typer(help="Device registry.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
register_key_rotation(keys_app)
app.add_typer(device_app, name="device")
audit_app = typer.Typer(help="Audit log: seal and verify.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(subject_app, name="subject")
app.add_typer(privacy_app, name="privacy")
app.command("auth-hook")(auth_hook)
app.add_typer(broker_app, name="broker")
app.add_typer(pairing_app, name="pairing")
app.add_typer(account_app, name="account")
app.add_typer(ota_app, name="ota")

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/qnect"
LOCAL_DIR = Path("var")


def _settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # fields come from QNECT_* variables


@keys_app.command("init")
def keys_init(out: Annotated[Path, typer.Option(help="Root key file to create (0600).")]) -> None:
    """Create a new random root key file; never overwrites."""
    try:
        create_root_key_file(out)
    except FileExistsError:
        typer.echo(f"{out} exists; refusing to overwrite", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"root key written to {out}")


@keys_app.command("rotate-kek")
def keys_rotate_kek(
    to_version: Annotated[
        int | None,
        typer.Option(help="Expected target version: rerunning with it is a no-op once done."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Rows rewrapped per transaction.")] = 2000,
) -> None:
    """Rewrap every stored key under a new KEK version (resumes an unfinished rotation)."""
    settings = _settings()
    ring = settings.kek_ring()
    with (
        psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn,
        Progress(transient=True) as bar,
    ):
        task = bar.add_task("rewrapping keys", total=None)
        try:
            result = rotate_kek(
                conn,
                ring,
                to_version=to_version,
                batch=batch,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        except CryptoError as exc:  # a damaged row: the error names it; rerun once fixed
            typer.echo(f"rotation stopped: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(json.dumps(dataclasses.asdict(result)))


@app.command("migrate")
def migrate_cmd() -> None:
    """Bring the schema up to date (idempotent)."""
    settings = _settings()
    dsn = settings.database_url.get_secret_value()
    applied = migrate(dsn, timescale=settings.timescale)
    typer.echo(json.dumps({"applied": applied, "layout": layout(dsn)}))


@device_app.command("provision")
def device_provision(
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODELS)}.")],
    count: Annotated[int, typer.Option(min=1)],
    out: Annotated[Path, typer.Option(help="JSON credentials file for the factory line.")],
) -> None:
    """Create devices with fresh root keys and write their credentials file."""
    if model not in MODELS:
        typer.echo(f"unknown model {model!r}; choose one of {', '.join(MODELS)}", err=True)
        raise typer.Exit(2)
    settings = _settings()
    keys = settings.registry_keys()
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        creds = provision(conn, keys, model, count)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump([c.to_json() for c in creds], f)
    typer.echo(f"provisioned {count} {model} device(s); credentials in {out}")
    if settings.broker_dynsec:
        try:
            broker.push_devices(settings, [c.device_id for c in creds])
        except (BrokerAdminError, OSError) as exc:
            typer.echo(f"broker not updated ({exc}); run `qnect broker sync`", err=True)
            raise typer.Exit(1) from None
        typer.echo("broker updated: each device may connect with its own credentials only")


@device_app.command("revoke")
def device_revoke(device_id: Annotated[str, typer.Argument(help="Device id.")]) -> None:
    """Revoke a device: refuse its frames, destroy its root key, disconnect it at the broker."""
    settings = _settings()
    try:
        result = broker.revoke(settings, device_id)
    except (BrokerAdminError, OSError) as exc:
        typer.echo(f"revoked in the registry; broker not updated ({exc}): run `qnect broker sync`")
        raise typer.Exit(1) from None
    if not result.revoked:
        typer.echo(f"{device_id} is unknown or already revoked", err=True)
    typer.echo(json.dumps(dataclasses.asdict(result)))


@device_app.command("find")
def device_find(
    mac: Annotated[str, typer.Option(help="MAC address: AA:BB:CC:DD:EE:FF, aa-bb-.., aabb...")],
) -> None:
    """Print the ids of devices registered with a MAC address, as JSON.

    Unaudited operator tool: support staff will use the privacy gate's audited wrapper.
    """
    settings = _settings()
    keys = settings.registry_keys()
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        try:
            found = find_by_mac(conn, keys, mac)
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
    typer.echo(json.dumps(found))


@app.command("bridge")
def bridge_cmd(
    workers: Annotated[
        int,
        typer.Option(min=0, help="Worker processes; 0 drains this member's sessions and exits."),
    ] = 1,
    batch: Annotated[int, typer.Option(min=1, help="Max messages per transaction.")] = 4000,
) -> None:
    """Run bridge workers until SIGTERM; the batch in hand is finished and acked."""
    configure()
    _settings().kek_ring()  # refuse to start without a usable root key
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervise(workers, stop, batch)


@app.command("api")
def api_cmd(
    host: Annotated[str, typer.Option(envvar="QNECT_API_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="QNECT_API_PORT", min=1, max=65535)] = 8000,
) -> None:
    """Serve the HTTP API (device activation, health) until SIGTERM."""
    configure()
    api_server.serve(_settings(), host, port)


@app.command("simulate")
def simulate_cmd(
    credentials: Annotated[Path, typer.Option(help="Credentials file from device provision.")],
    messages: Annotated[int, typer.Option(min=0, help="Telemetry frames per device.")] = 50,
    rate: Annotated[float, typer.Option(help="Frames per second, whole fleet; 0 = max.")] = 0.0,
    bad_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for receipts.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Last line: JSON summary.")] = False,
) -> None:
    """Run a simulated fleet speaking the real protocol; wait for storage receipts."""
    creds = json.loads(credentials.read_text())
    url = os.environ.get("QNECT_DEVICE_MQTT_URL") or os.environ.get("QNECT_MQTT_URL")
    address = BrokerAddress.parse(url or "mqtt://127.0.0.1:1883")
    summary = _simulate(creds, address, messages, rate, bad_fraction, timeout)
    typer.echo(json.dumps(summary) if as_json else json.dumps(summary, indent=2))
    if summary["unconfirmed"]:
        raise typer.Exit(1)


def _simulate(
    creds: list[dict[str, object]],
    address: BrokerAddress,
    messages: int,
    rate: float,
    bad_fraction: float,
    timeout: float,
) -> dict[str, object]:
    with Progress(transient=True) as bar:
        task = bar.add_task("publishing", total=max(1, messages * len(creds)))
        return simulator.run_fleet(
            creds,
            address,
            messages=messages,
            rate=rate,
            bad_fraction=bad_fraction,
            confirm_timeout_s=timeout,
            progress=lambda done, _total: bar.update(task, completed=done),
            isolated=os.environ.get("QNECT_BROKER_DYNSEC", "true").lower() not in {"0", "false"},
        )


@app.command("retention")
def retention_cmd() -> None:
    """Reconcile retention with the map per data category (fix drift, drop what expired)."""
    dsn = _settings().database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        drift, dropped = reconcile_retention(conn, datetime.now(UTC))
    typer.echo(
        json.dumps(
            {
                "fixed": [
                    {"table": d.table, "installed": d.installed, "expected": d.expected}
                    for d in drift
                ],
                "dropped": dropped,
            }
        )
    )


@app.command("stats")
def stats_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    device: Annotated[str | None, typer.Option(help="Counts of one device only.")] = None,
) -> None:
    """Accepted frames and rejects per reason, counted from the database."""
    dsn = _settings().database_url.get_secret_value()
    result = device_stats(dsn, device) if device else stats(dsn)
    typer.echo(json.dumps(result) if as_json else json.dumps(result, indent=2))


@app.command("run")
def run_cmd(
    devices: Annotated[int, typer.Option(help="Simulated devices per model (0: none).")] = 20,
    messages: Annotated[int, typer.Option(help="Frames per simulated device.")] = 50,
    bad_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.02,
    workers: Annotated[int, typer.Option(min=1)] = 2,
    exit_after: Annotated[bool, typer.Option(help="Stop after the simulation.")] = False,
) -> None:
    """Everything for a local deployment: database, keys, broker, bridge, a simulated fleet."""
    configure()
    env = os.environ
    if "QNECT_DATABASE_URL" not in env:
        _ensure_database(LOCAL_DSN)
        env["QNECT_DATABASE_URL"] = LOCAL_DSN
    if "QNECT_ROOT_KEY_FILE" not in env:
        key = (LOCAL_DIR / "root.key").resolve()
        if not key.exists():
            create_root_key_file(key)
            typer.echo(f"created a local root key at {key} (keep it: it opens every stored key)")
        env["QNECT_ROOT_KEY_FILE"] = str(key)
    mosquitto = None
    if "QNECT_MQTT_URL" not in env:
        mosquitto = _local_broker(env)
    settings = _settings()
    dsn = settings.database_url.get_secret_value()
    migrate(dsn, timescale=settings.timescale)
    typer.echo(f"schema up to date ({layout(dsn)} layout)")
    if settings.broker_dynsec:
        plan = broker.sync(settings)
        typer.echo(f"broker in step with the registry (+{plan.created}, -{plan.removed})")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor = threading.Thread(target=supervise, args=(workers, stop), name="supervisor")
    supervisor.start()
    try:
        if devices:
            _demo_fleet(settings, devices, messages, bad_fraction)
        if not exit_after:
            typer.echo("bridge running; Ctrl-C to stop")
            stop.wait()
    finally:
        stop.set()
        supervisor.join()
        if mosquitto is not None:
            mosquitto.terminate()
            mosquitto.wait(10)


def _local_broker(env: os._Environ[str]) -> subprocess.Popen[bytes]:
    """Start Mosquitto with the deploy security (dynsec, devices on TLS) for a local run."""
    data = (LOCAL_DIR / "mosquitto").resolve()
    # Identities are rebuilt from the registry by `broker sync` at every start, so the dynsec
    # file never outlives the root key that derived its admin password.
    (data / "dynsec.json").unlink(missing_ok=True)
    admin_password = _settings().registry_keys().broker.service("admin")
    tls = ensure_local_tls((LOCAL_DIR / "tls").resolve())
    port, tls_port = local_broker.free_port(), local_broker.free_port()
    proc = local_broker.start_mosquitto(
        data, port, admin_password=admin_password, tls=tls, tls_port=tls_port
    )
    env["QNECT_MQTT_URL"] = f"mqtt://127.0.0.1:{port}"
    env["QNECT_DEVICE_MQTT_URL"] = f"mqtts://127.0.0.1:{tls_port}?ca_file={tls.ca}"
    typer.echo(
        f"started mosquitto (pid {proc.pid}): services on 127.0.0.1:{port}, "
        f"devices over TLS on 127.0.0.1:{tls_port} (dynamic security, one role per device)"
    )
    return proc


def _demo_fleet(settings: Settings, per_model: int, messages: int, bad_fraction: float) -> None:
    keys = settings.registry_keys()
    creds: list[dict[str, object]] = []
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        for model in MODELS:
            made = provision(conn, keys, model, per_model)
            if settings.broker_dynsec:
                broker.push_devices(settings, [c.device_id for c in made])
            creds += [c.to_json() for c in made]
        owner = adopt(
            conn,
            build(settings.root_key()),
            [str(c["device_id"]) for c in creds],
            email="demo-owner@example.com",
        )
    typer.echo(
        f"provisioned {len(creds)} simulated devices owned by demo subject {owner} "
        f"(health consent given); sending {messages} frames each"
    )
    device_url = settings.device_mqtt_url or settings.mqtt_url
    summary = _simulate(creds, BrokerAddress.parse(device_url), messages, 0.0, bad_fraction, 120.0)
    typer.echo(json.dumps({"simulator": summary}, indent=2))
    typer.echo(json.dumps({"stats": stats(settings.database_url.get_secret_value())}, indent=2))


@app.command("bench")
def bench_cmd(
    devices: Annotated[int, typer.Option(help="Devices that send.")] = 1000,
    provisioned: Annotated[int, typer.Option(help="Extra idle devices in the registry.")] = 0,
    messages: Annotated[int, typer.Option(help="Backlog frames for the drain phases.")] = 200_000,
    workers: Annotated[int, typer.Option(min=1)] = 2,
    quick: Annotated[bool, typer.Option(help="Small sizes: finishes in under a minute.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Last line: one JSON object.")] = False,
) -> None:
    """End-to-end benchmark against the physical limits (scratch database and broker)."""
    options = bench.BenchOptions(devices, provisioned, messages, workers)
    if quick:
        options = bench.BenchOptions(200, 0, 20_000, workers, 5_000, 4.0)
    admin = os.environ.get("QNECT_DATABASE_URL", bench.LOCAL_DSN)
    admin = admin.rsplit("/", 1)[0] + "/postgres"
    result = bench.run(admin, options, lambda line: typer.echo(line, err=True))
    if not as_json:
        width = max(len(k) for k in result)
        for key, value in result.items():
            typer.echo(f"{key:<{width}}  {value}")
    typer.echo(json.dumps(result))


@audit_app.command("seal")
def audit_seal() -> None:
    """Seal the audit events that no seal lists yet; prints {seal_no, rows}."""
    settings = _settings()
    keys = AuditKeys.from_root(settings.root_key())
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        seal = seal_pending(conn, keys, now=datetime.now(UTC))
    rows = len(seal.seqs) if seal else 0
    typer.echo(json.dumps({"seal_no": seal.seal_no if seal else None, "rows": rows}))


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Check every audit row and seal; exit code 1 on any edit, deletion, insertion or break."""
    settings = _settings()
    keys = AuditKeys.from_root(settings.root_key())
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        report = verify_audit(conn, keys)
    doc = report.to_json()
    typer.echo(json.dumps(doc) if as_json else json.dumps(doc, indent=2))
    if not report.ok:
        raise typer.Exit(1)


def _ensure_database(dsn: str) -> None:
    admin = dsn.rsplit("/", 1)[0] + "/postgres"
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def main() -> None:
    """Console entry point."""
    app()
