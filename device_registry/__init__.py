"""Device registry: devices, profiles, credentials and their keys."""

from device_registry.errors import RegistryError, RegistryUnavailable, UnknownModel
from device_registry.model import DeviceContext, DeviceId, DeviceRecord, DeviceStatus, open_record
from device_registry.profiles import MODELS, PROFILES, DataPoint, PointType, Profile, ReportKind

__all__ = [
    "MODELS",
    "PROFILES",
    "DataPoint",
    "DeviceContext",
    "DeviceId",
    "DeviceRecord",
    "DeviceStatus",
    "PointType",
    "Profile",
    "RegistryError",
    "RegistryUnavailable",
    "ReportKind",
    "UnknownModel",
    "open_record",
]
