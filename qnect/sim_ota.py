"""The device side of OTA for simulated devices, and a fleet that runs it.

An ``OtaAgent`` belongs to one ``SimDevice``. What a real device keeps in flash survives its
reboots here too (installed version and sequence number, the job in progress with the bytes
downloaded so far); the session keys do not (a reboot reconnects and re-keys). It:

* verifies each offered manifest under the release public key it trusts
  (``QNECT_OTA_RELEASE_PUBKEY``), refuses another model, an older or equal sequence number or
  version, or a too old base (``crypto.firmware.check_installable``), and reports why;
* downloads chunk by chunk, asking for the chunk at the offset it holds (so after a reboot it
  resumes there), re-asking when nothing comes;
* checks the image's SHA-256, reports verifying and installing, fails when told to, otherwise
  "installs" (reboots, reports the new version in its info frame) and reports success;
* can be told to reboot mid-download, once, at a given offset.

Downlink messages arrive on the pump thread and are queued; ``step`` runs on the publishing
thread (as ``SimDevice.rekey_step``), never two at once for one device.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from broker_bridge.mqtt import BrokerAddress
from broker_bridge.ota_frames import Cancel, Chunk, Message, Offer, open_message
from crypto import device_keys
from crypto.errors import BadSignature, FirmwareRefused, MalformedManifest
from crypto.firmware import Manifest, artifact_digest, check_installable, verify_manifest
from device_registry.ota import DeviceOta
from qnect.simulator import Pump, SimDevice, Tally
from telemetry.ota import encode_report

RESEND_S = 2.0  # no chunk for this long: ask again (the worker's answer is QoS 0)
STEP_EVERY_S = 0.02
FACTORY_FIRMWARE = "1.4.2"  # what run_fleet devices report too


@dataclass
class Job:
    """A download in progress (kept in "flash")."""

    campaign_id: int
    manifest: Manifest
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Flash:
    """What survives a reboot."""

    firmware: str = FACTORY_FIRMWARE
    seq: int = 0
    job: Job | None = None


class OtaAgent:
    """OTA for one simulated device."""

    def __init__(
        self,
        device: SimDevice,
        release_key: bytes | None,
        *,
        fail_install: bool = False,
        reboot_at: int | None = None,
    ) -> None:
        self.device = device
        self.release_key = release_key
        self.fail_install = fail_install
        self.reboot_at = reboot_at  # reboot once when this many bytes are held
        self.flash = Flash()
        self.inbox: deque[Message] = deque()
        self.refused: list[str] = []  # reasons this device gave for refusing or failing
        self.bytes_received = 0
        self.reboots = 0
        self._last_chunk = time.monotonic()
        self._reboot_due = False

    # -- pump thread ----------------------------------------------------------------------
    def on_downlink(self, payload: bytes) -> None:
        """Open an ``down/ota`` frame under its session and queue the message."""
        header = device_keys.parse_header(payload)
        keys = self.device.sessions.get(header.epoch)
        if keys is not None:
            self.inbox.append(open_message(keys, self.device.device_id, payload))

    # -- publishing thread ----------------------------------------------------------------
    def step(self) -> None:
        """Handle queued messages, reboot when due, re-ask for a chunk that did not come."""
        try:
            if self._reboot_due:
                self._reboot_due = False
                self._reboot()
                self._ask()  # resume where the flash says
                return
            while self.inbox:
                self._handle(self.inbox.popleft())
            job = self.flash.job
            if job is not None and time.monotonic() - self._last_chunk > RESEND_S:
                self._ask()
        except (OSError, TimeoutError, KeyError):
            self._reboot_due = True  # connection or session lost: reconnect on the next step

    def _handle(self, message: Message) -> None:
        if isinstance(message, Offer):
            self._offer(message)
        elif isinstance(message, Chunk):
            self._chunk(message)
        elif isinstance(message, Cancel):
            job = self.flash.job
            if job is not None and job.campaign_id == message.campaign_id:
                self.flash.job = None

    def _offer(self, offer: Offer) -> None:
        job = self.flash.job
        if job is not None and job.campaign_id == offer.campaign_id:
            self._ask()  # offered again (it lost track of us): resume
            return
        try:
            manifest = self._verify(offer)
            if (manifest.version, manifest.seq) == (self.flash.firmware, self.flash.seq):
                self._report(offer.campaign_id, DeviceOta.SUCCEEDED, manifest.size)
                return  # installed already; the success report got lost
            check_installable(
                manifest,
                model=self.device.model,
                current_version=self.flash.firmware,
                current_seq=self.flash.seq,
            )
        except BadSignature:
            self._refuse(offer.campaign_id, "bad_signature")
            return
        except MalformedManifest:
            self._refuse(offer.campaign_id, "malformed_manifest")
            return
        except FirmwareRefused as exc:
            self._refuse(offer.campaign_id, exc.reason)
            return
        if job is not None:
            self._refuse(offer.campaign_id, "busy")
            return
        self.flash.job = Job(offer.campaign_id, manifest)
        self._ask()

    def _verify(self, offer: Offer) -> Manifest:
        if self.release_key is None:
            raise BadSignature("no release key to verify with")
        return verify_manifest(offer.manifest, offer.signature, self.release_key)

    def _chunk(self, chunk: Chunk) -> None:
        job = self.flash.job
        if job is None or job.campaign_id != chunk.campaign_id or chunk.offset != len(job.data):
            return  # a duplicate or a late answer to an earlier request
        job.data += chunk.data[: job.manifest.size - len(job.data)]
        self.bytes_received += len(chunk.data)
        self._last_chunk = time.monotonic()
        if self.reboot_at is not None and len(job.data) >= self.reboot_at:
            self.reboot_at = None
            self._reboot_due = True  # power lost mid-download: the flash keeps the bytes
            return
        if len(job.data) < job.manifest.size:
            self._ask()
        else:
            self._install(job)

    def _install(self, job: Job) -> None:
        size = job.manifest.size
        self.flash.job = None
        if artifact_digest(bytes(job.data)) != job.manifest.sha256:
            self._refuse(job.campaign_id, "checksum")
            return
        self._report(job.campaign_id, DeviceOta.VERIFYING, size)
        self._report(job.campaign_id, DeviceOta.INSTALLING, size)
        if self.fail_install:
            self._refuse(job.campaign_id, "install_failed")
            return
        self.flash.firmware, self.flash.seq = job.manifest.version, job.manifest.seq
        self._reboot()  # boots the new image: a new connection and session
        self.send_info()
        self._report(job.campaign_id, DeviceOta.SUCCEEDED, size)

    def _reboot(self) -> None:
        self.reboots += 1
        self.device.reconnect()
        self._last_chunk = time.monotonic()

    def _ask(self) -> None:
        job = self.flash.job
        if job is not None:
            self._last_chunk = time.monotonic()
            self._report(job.campaign_id, DeviceOta.DOWNLOADING, len(job.data))

    def _refuse(self, campaign_id: int, reason: str) -> None:
        self.refused.append(reason)
        self._report(campaign_id, DeviceOta.FAILED, 0, reason=reason)

    def _report(
        self, campaign_id: int, state: DeviceOta, offset: int, *, reason: str | None = None
    ) -> None:
        firmware = self.flash.firmware if state is DeviceOta.SUCCEEDED else None
        body = encode_report(
            campaign_id,
            state,
            offset,
            ts_ms=int(time.time() * 1000),
            firmware=firmware,
            reason=reason,
        )
        _, frame = self.device.seal("ota", body)
        self.device.publish(self.device.topic("ota"), frame)

    def send_info(self) -> None:
        """The info report with the running firmware version."""
        self.device.send("info", {"mac": self.device.mac, "fw": self.flash.firmware, "rssi": -55})


class OtaFleet:
    """Simulated devices that stay connected and run OTA until stopped."""

    def __init__(
        self,
        credentials: list[dict[str, Any]],
        address: BrokerAddress,
        release_key: bytes | None,
        *,
        fail_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        rng = random.Random(seed)
        self._pump = Pump()
        tally = Tally()
        self.devices = [
            SimDevice(c, address, tally, random.Random(rng.random()), self._pump)
            for c in credentials
        ]
        failing = set(rng.sample(range(len(self.devices)), round(fail_fraction * len(credentials))))
        self.agents = {}
        for i, device in enumerate(self.devices):
            agent = OtaAgent(device, release_key, fail_install=i in failing)
            device.ota = agent
            self.agents[device.device_id] = agent
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="sim-ota")
        self._thread = threading.Thread(target=self._run, name="sim-ota-driver", daemon=True)

    def start(self) -> None:
        """Connect every device, report firmware and presence, start stepping."""
        list(self._pool.map(lambda d: d.connect(), self.devices))
        for device in self.devices:
            self.agents[device.device_id].send_info()
            device.send("status", {"online": True})
        self._thread.start()

    def _run(self) -> None:
        agents = list(self.agents.values())
        while not self._stop.is_set():
            list(self._pool.map(OtaAgent.step, agents))
            time.sleep(STEP_EVERY_S)

    def stop(self) -> None:
        """Stop stepping and disconnect."""
        self._stop.set()
        self._thread.join(10)
        for device in self.devices:
            device.close()
        self._pool.shutdown()
        self._pump.stop()
