"""A TCP proxy on loopback for fault injection: cut every connection, or slow traffic down.

Like psycopg's ``tests/fix_proxy.py``: the code under test connects through the proxy, and the
test cuts connections (as a network failure or a server crash would) or adds latency to every
chunk the server sends back (a slow database).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from qnect.local_broker import free_port


class Proxy:
    """Forwards 127.0.0.1:<port> to a target address."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.delay_s = 0.0
        self.refuse = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="proxy").start()

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                # shutdown() wakes the pump thread blocked in recv(); close() alone would not,
                # and the connection would stay open but silent.
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(conns) // 2

    def close(self) -> None:
        """Stop accepting and cut everything."""
        self._stop.set()
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float | None) -> None:
        try:
            while data := src.recv(65536):
                wait = self.delay_s if delay is None else delay
                if wait:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def pg_proxy(db_dsn: str) -> Iterator[tuple[Proxy, str]]:
    """A proxy in front of the test database; yields it and the DSN that goes through it."""
    rest = db_dsn.split("@", 1)[1]
    host_port, dbname = rest.split("/", 1)
    host, port = host_port.split(":") if ":" in host_port else (host_port, "5432")
    proxy = Proxy((host, int(port)))
    user = db_dsn.split("://", 1)[1].split("@", 1)[0]
    yield proxy, f"postgresql://{user}@127.0.0.1:{proxy.port}/{dbname}"
    proxy.close()
