"""Helpers for operations tests: scrape /metrics, poll HTTP endpoints, run ``qnect api``."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from qnect.local_broker import free_port
from tests.fix_bridge import REPO

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    """Status and body of a GET (an HTTP error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_status(url: str, status: int = 200, timeout: float = 30) -> str:
    """Poll *url* until it answers *status*; returns the body."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            code, body = get(url, timeout=2)
            if code == status:
                return body
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.1)


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    code, text = get(url)
    assert code == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def families(url: str) -> set[str]:
    """Names of the metric families a /metrics page declares (with or without samples)."""
    _, text = get(url)
    return {f.name for f in text_string_to_metric_families(text)}


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of *name* whose labels include *labels*."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """Samples of *name* matching *labels*, summed per value of *label*."""
    wanted = set(labels.items())
    out: dict[str, float] = {}
    for (n, ls), v in samples.items():
        if n == name and wanted <= set(ls):
            key = dict(ls)[label]
            out[key] = out.get(key, 0) + v
    return out


@contextmanager
def api_process(
    env: dict[str, str], log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``qnect api`` on a free loopback port until the block ends (SIGTERM, exit 0)."""
    port = free_port()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qnect", "api", "--port", str(port)],
            env={**env, "QNECT_API_DRAIN_S": env.get("QNECT_API_DRAIN_S", "0.5")},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_status(f"{base}/healthz")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            assert proc.wait(15) == 0
