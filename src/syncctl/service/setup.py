"""Building a room's bus and users from its configuration (for `syncctl run` and `demo`)."""

from __future__ import annotations

from syncctl.bus import Bus, InProcessBus, MqttBus, MqttSettings, Status, Topics, Users, load_users
from syncctl.config import RoomConfig


def room_topics(config: RoomConfig) -> Topics:
    return Topics(config.room.mqtt.topic_prefix, config.room.room.id)


def make_bus(config: RoomConfig) -> Bus:
    """The controller side's bus: in-process when ``mqtt.enabled`` is false, else MQTT with
    the room's broker settings, credentials and the last will ``offline``. Raises
    ``CredentialsError`` for an unreadable credentials file."""
    topics = room_topics(config)
    if not config.room.mqtt.enabled:
        return InProcessBus(topics)
    room_id = config.room.room.id
    settings = MqttSettings.from_config(
        config, client_id=config.room.mqtt.client_id or f"syncctl-{room_id}")
    return MqttBus(topics, settings, will=Status(room=room_id, controller="offline"))


def load_room_users(config: RoomConfig) -> Users:
    """The users file named by ``users.file`` (relative to the room file); no file: no users,
    so nobody can log in over the bus. Raises ``UsersFileError``."""
    name = config.room.users.file
    if name is None:
        return Users([])
    return load_users(config.path.parent / name)
