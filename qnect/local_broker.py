"""Start a private Mosquitto with the deploy configuration (for ``qnect run`` and tests)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "local.conf"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """Write the config into *data_dir* and start mosquitto on 127.0.0.1:*port*."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "mosquitto.conf"
    conf.write_text(CONFIG.read_text().format(port=port, data_dir=data_dir, user=getpass.getuser()))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL)  # noqa: S603
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("mosquitto exited at start") from None
            time.sleep(0.05)
        else:
            return proc
    proc.kill()
    raise RuntimeError("mosquitto did not start listening")
