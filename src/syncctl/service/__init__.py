"""The room service: a controller, its bus and its audit trail, tied together (layer 6)."""

from syncctl.service.room import (
    LOCAL_SESSION,
    EngineeringHandler,
    RoomService,
    ServiceSettings,
    ServiceStats,
)
from syncctl.service.setup import load_room_users, make_bus, room_topics

__all__ = [
    "LOCAL_SESSION",
    "EngineeringHandler",
    "RoomService",
    "ServiceSettings",
    "ServiceStats",
    "load_room_users",
    "make_bus",
    "room_topics",
]
