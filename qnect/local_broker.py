"""Start a private Mosquitto (for ``qnect run``, the benchmark and tests).

The secure template (``deploy/mosquitto/local.conf``) has dynamic security and, given TLS
files, a TLS listener for devices; its dynsec file is initialised with the admin password
Qnect derives from its root key, so the registry can then push identities
(``qnect.broker.sync``). Tests that must inject frames on any topic pass an open config of
their own.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from broker_bridge.dynsec import config_file
from qnect.local_tls import TlsFiles

SECURE_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "local.conf"
DYNSEC_PLUGINS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dynsec_plugin() -> str:
    """Path of Mosquitto's dynamic-security plugin on this machine."""
    for path in DYNSEC_PLUGINS:
        if Path(path).exists():
            return path
    raise RuntimeError("mosquitto_dynamic_security.so not found (install mosquitto 2)")


def init_dynsec(data_dir: Path, admin_password: str) -> None:
    """Create ``dynsec.json`` with the admin identity, unless it exists."""
    path = data_dir / "dynsec.json"
    if not path.exists():
        init_dynsec_file(path, admin_password)


def init_dynsec_file(path: Path, admin_password: str) -> None:
    """Create a dynsec file at *path* whose only identity is ``admin`` (control topic only)."""
    write_dynsec_file(path, config_file(admin_password, {}, {}, os.urandom))


def write_dynsec_file(path: Path, document: dict[str, object]) -> None:
    """Write a dynsec document atomically with mode 0600 (the broker must not be running)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(document, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _tls_block(tls: TlsFiles | None, tls_port: int | None) -> str:
    if tls is None or tls_port is None:
        return ""
    return (
        f"listener {tls_port} 127.0.0.1\n"
        f"certfile {tls.cert}\nkeyfile {tls.key}\ncafile {tls.ca}\ntls_version tlsv1.2"
    )


def start_mosquitto(
    data_dir: Path,
    port: int,
    *,
    admin_password: str | None = None,
    tls: TlsFiles | None = None,
    tls_port: int | None = None,
    config: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Write the config into *data_dir* and start mosquitto on 127.0.0.1:*port*.

    With *admin_password* the secure template is used (dynamic security); otherwise *config*
    (a template with ``{port}``, ``{data_dir}``, ``{user}``) must be given.
    """
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "mosquitto.conf"
    if admin_password is not None:
        init_dynsec(data_dir, admin_password)
        text = SECURE_CONFIG.read_text().format(
            port=port,
            data_dir=data_dir,
            user=getpass.getuser(),
            dynsec_plugin=dynsec_plugin(),
            tls_listener=_tls_block(tls, tls_port),
        )
    elif config is not None:
        text = config.read_text().format(port=port, data_dir=data_dir, user=getpass.getuser())
    else:
        raise ValueError("give admin_password (secure broker) or an explicit config")
    conf.write_text(text)
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        wait_listening(proc, port, what="mosquitto")
    except RuntimeError:
        proc.kill()
        raise
    return proc


def wait_listening(
    proc: subprocess.Popen[bytes], port: int, *, what: str, timeout_s: float = 10.0
) -> None:
    """Wait until *proc* accepts TCP connections on 127.0.0.1:*port*.

    Raises:
        RuntimeError: it exited first (see its log), or did not listen within *timeout_s*.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited at start (see its log)") from None
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"{what} did not start listening")
