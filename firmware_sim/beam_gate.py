"""Beam-gate controller model: state and physics, advanced by ``process(dt)``. No I/O.

What the firmware does (DESIGN.md section 1):
- a synchrotron spill cycle (extraction, then a gap), beam only during extraction;
- a gate (RF-knockout) that follows its command after an actuation delay, with readback;
- dose counted in monitor units while the gate is open during a spill, at a dose rate;
- a hardware dose limit: the gate closes by itself at the preset;
- the hard-wired chain: door, emergency stop and the interlock chain force the gate closed
  at once; an emergency stop latches a fault;
- a watchdog, armed by the first heartbeat after power-up or a fault reset: a heartbeat
  register unchanged for longer than its timeout then closes the gate and latches a fault;
- fault latch, cleared only by a fault-reset command once the cause is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag


class BeamGateFault(IntFlag):
    """Bits of the fault code register."""

    NONE = 0
    WATCHDOG = 0x0001
    EMERGENCY_STOP = 0x0002
    GATE_FEEDBACK = 0x0008


LATCHING = BeamGateFault.WATCHDOG | BeamGateFault.EMERGENCY_STOP | BeamGateFault.GATE_FEEDBACK


@dataclass
class BeamGateFaults:
    """Injected faults (from the backdoor). All off by default."""

    door_open: bool = False
    estop_pressed: bool = False
    chain_broken: bool = False
    stuck_gate: bool = False
    """The gate stays open (and keeps delivering dose) whatever it is told."""
    slow_gate_factor: float = 1.0


@dataclass
class BeamGateModel:
    spill_on_s: float = 2.0
    spill_off_s: float = 1.3
    dose_rate_mu_per_s: float = 1.0
    gate_delay_s: float = 0.003
    watchdog_timeout_s: float = 0.2
    watchdog_scale: float = 1.0
    """The watchdog acts after ``watchdog_timeout_s`` x this (1 = as configured). Not a
    register: a simulated *faulty* firmware (``--beam-gate-watchdog-scale``) whose
    ``watchdog_timeout_ms`` register still reads the configured value, for the commissioning
    test that must catch it."""
    faults: BeamGateFaults = field(default_factory=BeamGateFaults)

    # State
    t: float = 0.0
    gate_command: bool = False
    gate_open: bool = False
    dose_mu: float = 0.0
    dose_preset_mu: float = 0.0
    """Absolute limit in MU (0 = no preset loaded: the gate never opens)."""
    fault: BeamGateFault = BeamGateFault.NONE
    heartbeat: int = 0
    _heartbeat_changed_at: float = 0.0
    _command_changed_at: float = 0.0
    watchdog_armed: bool = False

    # -- inputs (the register interface calls these) -----------------------------------

    def command_gate(self, open_: bool) -> None:
        if open_ != self.gate_command:
            self.gate_command = open_
            self._command_changed_at = self.t

    def write_heartbeat(self, value: int) -> None:
        if value != self.heartbeat:
            self.heartbeat = value
            self._heartbeat_changed_at = self.t
            self.watchdog_armed = True

    def load_dose_preset(self, preset_mu: float) -> None:
        self.dose_preset_mu = preset_mu

    def reset_faults(self) -> None:
        """Clear latched faults whose cause is gone. The heartbeat watchdog restarts."""
        if self.faults.estop_pressed:
            return
        self.fault = BeamGateFault.NONE
        self.watchdog_armed = False

    # -- derived status ----------------------------------------------------------------

    @property
    def spill_active(self) -> bool:
        cycle = self.spill_on_s + self.spill_off_s
        return (self.t % cycle) < self.spill_on_s

    @property
    def chain_ok(self) -> bool:
        return not (self.faults.chain_broken or self.faults.door_open or self.faults.estop_pressed)

    @property
    def watchdog_tripped(self) -> bool:
        return bool(self.fault & BeamGateFault.WATCHDOG)

    @property
    def ready(self) -> bool:
        return self.chain_ok and not (self.fault & LATCHING)

    @property
    def gate_permitted(self) -> bool:
        """What the hard-wired logic allows, whatever the command."""
        return self.ready and self.dose_mu < self.dose_preset_mu

    # -- physics ----------------------------------------------------------------------

    def process(self, dt: float) -> float:
        """Advance by ``dt`` seconds; returns the dose delivered in this interval."""
        if dt <= 0:
            return 0.0
        self.t += dt
        if self.faults.estop_pressed:
            self.fault |= BeamGateFault.EMERGENCY_STOP
        watchdog_s = self.watchdog_timeout_s * self.watchdog_scale
        if self.watchdog_armed and self.t - self._heartbeat_changed_at > watchdog_s:
            self.fault |= BeamGateFault.WATCHDOG

        delay = self.gate_delay_s * max(1.0, self.faults.slow_gate_factor)
        wanted = self.gate_command and self.gate_permitted
        was_open = self.gate_open
        if not self.gate_permitted:
            self.gate_open = False  # hard-wired: closes at once, no actuation delay
        elif self.t - self._command_changed_at >= delay:
            self.gate_open = wanted
        if self.faults.stuck_gate and was_open:
            self.gate_open = True  # mechanically stuck: nothing closes it, not even hardware

        delivered = 0.0
        if self.gate_open and self.spill_active:
            delivered = self.dose_rate_mu_per_s * dt
            if not self.faults.stuck_gate:
                delivered = min(delivered, max(0.0, self.dose_preset_mu - self.dose_mu))
            self.dose_mu += delivered
            if self.dose_mu >= self.dose_preset_mu and not self.faults.stuck_gate:
                self.gate_open = False  # the hardware dose limit; not a fault
        return delivered

    def reboot(self) -> None:
        """Power cycle: every register back to its power-up value."""
        fresh = BeamGateModel(
            spill_on_s=self.spill_on_s,
            spill_off_s=self.spill_off_s,
            dose_rate_mu_per_s=self.dose_rate_mu_per_s,
            gate_delay_s=self.gate_delay_s,
            watchdog_timeout_s=self.watchdog_timeout_s,
            watchdog_scale=self.watchdog_scale,
            faults=self.faults,
        )
        fresh.t = self.t
        fresh._heartbeat_changed_at = self.t
        fresh._command_changed_at = self.t
        self.__dict__.update(fresh.__dict__)
