"""Device clients: typed signals over a register map, on a swappable backend (Modbus TCP, RTU,
RTU over TCP). Remote failures become data (an unhealthy reading), never exceptions.

See docs/devices.md for the contract, the transaction plans and the timing rules.
"""

from syncctl.devices.beam_gate import BeamGateClient, beam_gate_status
from syncctl.devices.imaging import ImagingClient, imaging_status
from syncctl.devices.modbus import ModbusLink
from syncctl.devices.signals import (
    DeviceDataError,
    LinkError,
    ReadBlock,
    ReadPlan,
    RegisterBackend,
    RemoteError,
    Signal,
    SignalDevice,
    SignalMap,
    SignalValues,
    VerifyError,
    WriteBlock,
    plan_reads,
    plan_writes,
    read_plan,
)

__all__ = [
    "BeamGateClient",
    "DeviceDataError",
    "ImagingClient",
    "LinkError",
    "ModbusLink",
    "ReadBlock",
    "ReadPlan",
    "RegisterBackend",
    "RemoteError",
    "Signal",
    "SignalDevice",
    "SignalMap",
    "SignalValues",
    "VerifyError",
    "WriteBlock",
    "beam_gate_status",
    "imaging_status",
    "plan_reads",
    "plan_writes",
    "read_plan",
]
