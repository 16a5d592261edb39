"""Room configuration and register maps: pydantic v2 models loaded from YAML.

Errors name the file, the field path, the line and what is allowed; a configuration error is
local (refuse to start), never a trip.
"""

from syncctl.config.errors import ConfigError, ConfigIssue
from syncctl.config.loader import RoomConfig, config_hash, load_register_map, load_room
from syncctl.config.registers import (
    REQUIRED_SIGNALS,
    CodecError,
    RegisterDef,
    RegisterMapFile,
    decode,
    decode_bits,
    decode_raw,
    encode,
    encode_bits,
    encode_raw,
)
from syncctl.config.room import RoomFile

__all__ = [
    "REQUIRED_SIGNALS",
    "CodecError",
    "ConfigError",
    "ConfigIssue",
    "RegisterDef",
    "RegisterMapFile",
    "RoomConfig",
    "RoomFile",
    "config_hash",
    "decode",
    "decode_bits",
    "decode_raw",
    "encode",
    "encode_bits",
    "encode_raw",
    "load_register_map",
    "load_room",
]
