"""Data categories (fideslang-style keys) that every stored field is labelled with (pure).

Owns the vocabulary only; which column carries which category is declared next to the data
(device profiles, table definitions), and decisions on reads belong to the purpose engine.
"""

from __future__ import annotations

from enum import StrEnum


class DataCategory(StrEnum):
    """The categories of data Qnect stores."""

    DEVICE_TELEMETRY = "user.device.telemetry"  # pseudonymous usage measurements
    DEVICE_OPERATIONS = "system.operations"  # firmware, presence: about the device, not a person
    DEVICE_IDENTIFIER = "user.device.device_id"  # MAC address
    IP_ADDRESS = "user.device.ip_address"
    NETWORK = "user.device.network"  # Wi-Fi SSID and signal
    LOCATION_PRECISE = "user.location.precise"  # robot-cleaner positions inside a home
    HEALTH = "user.health_and_medical"  # Art. 9 special category (scales)
    MEDIA = "user.content.private"  # camera media references
    DEVICE_REF = "user.device.pseudonymous_id"  # our opaque device id, linkable to an owner
    ACCOUNT = "user.account"  # household membership, account status
    NAME = "user.name"
    EMAIL = "user.contact.email"
    PRIVACY_PREFERENCES = "user.privacy_preferences"  # consents, objections, restriction
    AUDIT = "system.audit"  # who read what (subjects only as keyed pseudonyms)
