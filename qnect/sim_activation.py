"""The device side of activation: what a simulated device sends to ``/v1/devices/{id}/activate``.

Plain ``urllib`` (a device's HTTP stack is small); the proof is ``crypto.pairing.proof`` under
the device's current root key.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

from crypto.pairing import proof

TIMEOUT_S = 10.0


def activate(
    api_url: str, creds: dict[str, Any], token: str, household_id: str, *, ts_ms: int | None = None
) -> tuple[int, dict[str, Any]]:
    """POST the activation; returns (HTTP status, JSON body)."""
    stamp = int(time.time() * 1000) if ts_ms is None else ts_ms
    root = bytes.fromhex(creds["root_key"])
    tag = proof(root, creds["device_id"], token, household_id, stamp)
    body = {
        "token": token,
        "household_id": household_id,
        "ts_ms": stamp,
        "proof": base64.urlsafe_b64encode(tag).decode().rstrip("="),
    }
    url = f"{api_url.rstrip('/')}/v1/devices/{creds['device_id']}/activate"
    if not url.startswith(("http://", "https://")):
        raise ValueError("the API URL must be http(s)")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")
