"""HTTP API: the app factory with its error table, and the MQTT auth hook for brokers.

The mobile, operator and DPO routes (issue 6) join ``create_app`` as further routers.
"""

from api.app import ERRORS, Problem, create_app
from api.auth_hook import AuthHook, DeviceCache, DeviceLookup, broker_router
from api.errors import ApiError, MalformedRequest
from api.mqtt_access import Action, Verdict

__all__ = [
    "ERRORS",
    "Action",
    "ApiError",
    "AuthHook",
    "DeviceCache",
    "DeviceLookup",
    "MalformedRequest",
    "Problem",
    "Verdict",
    "broker_router",
    "create_app",
]
