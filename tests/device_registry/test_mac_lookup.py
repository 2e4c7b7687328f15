"""Finding devices by MAC: blind-index candidates, decrypted and compared, on the real database."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crypto.blind_index import MAC_INDEX_BITS, mac_value
from crypto.keys import KeyClass, parse_root_key
from device_registry.model import RegistryKeys, random_mac
from device_registry.postgres import Credentials, find_by_mac, mac_candidates, provision
from device_registry.profiles import MODELS
from tests.fix_bridge import qnect

Conn = psycopg.Connection[Any]
FLEET = 2000


@pytest.fixture(scope="module")
def keys(root_key_file: Path) -> RegistryKeys:
    """The registry keys of the module's root key (22-bit MAC index)."""
    return RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()))


@pytest.fixture(scope="module")
def fleet(db_dsn: str, keys: RegistryKeys) -> list[Credentials]:
    """2,000 devices across all models, provisioned once for the module."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        per_model = FLEET // len(MODELS)
        return [c for m in MODELS for c in provision(conn, keys, m, per_model)]


def _spellings(mac: str) -> list[str]:
    return [mac, mac.lower(), mac.replace(":", "-"), mac.replace(":", "").lower()]


def _unknown_mac(fleet: list[Credentials]) -> str:
    known = {c.mac for c in fleet}
    while (mac := random_mac(os.urandom(6))) in known:
        pass
    return mac


def test_provision_fills_the_mac_index(conn: Conn, keys: RegistryKeys, fleet: list[Credentials]):
    """Every provisioned device has mac_bidx = the 22-bit index value of its MAC."""
    rows = dict(conn.execute("SELECT device_id, mac_bidx FROM devices").fetchall())
    assert len(fleet) == FLEET
    assert keys.mac_index.bits == MAC_INDEX_BITS
    assert all(rows[c.device_id] == mac_value(keys.mac_index, c.mac) for c in fleet)


def test_find_by_mac_returns_exactly_the_device(
    conn: Conn, keys: RegistryKeys, fleet: list[Credentials]
):
    """Any spelling of a registered MAC finds exactly its device among 2,000."""
    for creds in fleet[::97]:
        for spelling in _spellings(creds.mac):
            assert find_by_mac(conn, keys, spelling) == [creds.device_id]


def test_find_by_unknown_mac_finds_nothing(
    conn: Conn, keys: RegistryKeys, fleet: list[Credentials]
):
    """A MAC nobody registered returns an empty list; a non-MAC is a ValueError."""
    assert find_by_mac(conn, keys, _unknown_mac(fleet)) == []
    with pytest.raises(ValueError, match="MAC"):
        find_by_mac(conn, keys, "not-a-mac")


def test_candidates_sharing_an_index_value_are_disambiguated(
    conn: Conn, root_key_file: Path, fleet: list[Credentials]
):
    """With a 2-bit index many devices share a value; decrypting the MAC keeps the right one."""
    small = RegistryKeys.from_root_key(parse_root_key(root_key_file.read_text()), mac_bits=2)
    crowd = provision(conn, small, "plug", 40)
    for creds in crowd[:5]:
        candidates = mac_candidates(conn, small, creds.mac)
        assert len(candidates) > 1
        assert creds.device_id in candidates
        assert find_by_mac(conn, small, creds.mac.lower()) == [creds.device_id]
    assert find_by_mac(conn, small, _unknown_mac(fleet + crowd)) == []


def test_revoked_device_is_found_until_its_network_key_is_destroyed(
    conn: Conn, keys: RegistryKeys, fleet: list[Credentials]
):
    """Revocation keeps the MAC readable; destroying the binding's network key hides the device."""
    target = fleet[3]
    conn.execute(
        "UPDATE devices SET status = 'revoked', root_key_wrapped = NULL WHERE device_id = %s",
        (target.device_id,),
    )
    assert find_by_mac(conn, keys, target.mac) == [target.device_id]
    conn.execute(
        "UPDATE data_keys k SET state = 'destroyed', wrapped = NULL FROM devices d "
        "WHERE d.device_id = %s AND k.owner = d.binding AND k.key_class = %s",
        (target.device_id, int(KeyClass.NETWORK)),
    )
    assert mac_candidates(conn, keys, target.mac) == [target.device_id]
    assert find_by_mac(conn, keys, target.mac) == []


def test_device_find_cli_prints_json_ids(
    db_dsn: str, root_key_file: Path, fleet: list[Credentials]
):
    """`qnect device find --mac` prints the matching device ids as a JSON list."""
    env = dict(os.environ, QNECT_DATABASE_URL=db_dsn, QNECT_ROOT_KEY_FILE=str(root_key_file))
    target = fleet[10]
    out = qnect("device", "find", "--mac", target.mac.replace(":", "-").lower(), env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [target.device_id]
    bad = qnect("device", "find", "--mac", "zz", env=env)
    assert bad.returncode == 2
    assert "not a MAC address" in bad.stderr
