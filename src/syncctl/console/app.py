"""The operator console: a Textual app over a ``BusClient`` (docs/console.md).

Screens: ``LoginScreen`` (operator id and PIN, checked by the room service), ``MainScreen``
(everything at a glance, the actions) and the modal dialogs (confirmation, beam-on with typed
confirmation, plan choice, shelving). The app never decides anything about safety: it sends
commands and shows the service's and the core's answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, ProgressBar, Select, Static

from syncctl.bus import Ack, BusClient, LoginRefused, Role, RoomState, Telemetry
from syncctl.bus.messages import ROLES
from syncctl.console.logic import (
    ACTIONS,
    ACTIONS_BY_COMMAND,
    AXES,
    Trace,
    telemetry_gap_text,
    why_not,
)
from syncctl.core import RULES_BY_ID, RuleClass

Bindings = list[Binding | tuple[str, str] | tuple[str, str, str]]
REFRESH_S = 0.25
BEAM_ON_PHRASE = "BEAM ON"
MODE_STYLE = {
    "OFFLINE": "white on grey30", "SAFE": "black on green", "SETUP": "black on cyan",
    "READY": "black on yellow", "TREATING": "white on dark_orange3", "HOLD": "black on yellow",
    "COMPLETE": "black on green", "FAULT": "white on red",
}


@dataclass(frozen=True)
class PlanChoice:
    plan_id: str
    planned_dose_mu: float


# --- dialogs -----------------------------------------------------------------------------------


class ConfirmScreen(ModalScreen[bool]):
    """Says what the action will do; y / Enter confirms, n / Escape cancels."""

    BINDINGS: ClassVar[Bindings] = [
        Binding("y", "answer(True)", "Confirm"), Binding("n", "answer(False)", "Cancel"),
        Binding("escape", "answer(False)", "Cancel")]

    def __init__(self, title: str, what: str) -> None:
        super().__init__()
        self.title_text, self.what = title, what

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(self.title_text, style="bold"), id="confirm-title")
            yield Static(self.what, id="confirm-what")
            with Horizontal(classes="buttons"):
                yield Button("Confirm (y)", id="confirm-yes", variant="primary")
                yield Button("Cancel (n)", id="confirm-no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed, "#confirm-yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-no")
    def _no(self) -> None:
        self.dismiss(False)


class BeamOnScreen(ModalScreen[bool]):
    """Beam on needs the phrase typed: no single key confirms it."""

    BINDINGS: ClassVar[Bindings] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="beam"):
            yield Label(Text("BEAM ON: explicit confirmation", style="bold red"))
            yield Static(self.what)
            yield Static(f"Type {BEAM_ON_PHRASE} and press Enter (Escape cancels).")
            yield Input(placeholder=BEAM_ON_PHRASE, id="beam-phrase")
            yield Static("", id="beam-why")
            with Horizontal(classes="buttons"):
                yield Button("Beam on", id="beam-yes", variant="error", disabled=True)
                yield Button("Cancel", id="beam-no")

    def on_mount(self) -> None:
        self.query_one("#beam-phrase", Input).focus()

    def _typed(self) -> bool:
        return self.query_one("#beam-phrase", Input).value.strip() == BEAM_ON_PHRASE

    @on(Input.Changed, "#beam-phrase")
    def _changed(self) -> None:
        self.query_one("#beam-yes", Button).disabled = not self._typed()

    @on(Input.Submitted, "#beam-phrase")
    def _submitted(self) -> None:
        if self._typed():
            self.dismiss(True)
        else:
            self.query_one("#beam-why", Static).update(
                f"Not confirmed: type exactly {BEAM_ON_PHRASE}.")

    @on(Button.Pressed, "#beam-yes")
    def _yes(self) -> None:
        if self._typed():
            self.dismiss(True)

    @on(Button.Pressed, "#beam-no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_cancel(self) -> None:
        self.dismiss(False)


class PlanScreen(ModalScreen[str | None]):
    """Choose one of the room's plans (Enter), Escape cancels."""

    BINDINGS: ClassVar[Bindings] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, plans: list[PlanChoice]) -> None:
        super().__init__()
        self.plans = plans

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text("Select a plan (Enter), Escape cancels", style="bold"))
            yield OptionList(*[f"{p.plan_id}  (planned {p.planned_dose_mu:g} MU)"
                               for p in self.plans], id="plan-list")

    def on_mount(self) -> None:
        options = self.query_one("#plan-list", OptionList)
        options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected, "#plan-list")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.plans[event.option_index].plan_id)

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class ShelveRequest:
    rule_id: str
    reason: str
    expiry_s: float


class ShelveScreen(ModalScreen[ShelveRequest | None]):
    """Shelve an active interruption alarm: rule, reason and expiry are all required."""

    BINDINGS: ClassVar[Bindings] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, rule_ids: list[str]) -> None:
        super().__init__()
        self.rule_ids = rule_ids

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text("Shelve an alarm (physicist)", style="bold"))
            yield Static("A shelved alarm still denies its permit; terminations cannot be "
                         "shelved.")
            yield Select([(f"{r} {RULES_BY_ID[r].name}" if r in RULES_BY_ID else r, r)
                          for r in self.rule_ids], prompt="rule", id="shelve-rule")
            yield Input(placeholder="reason (required)", id="shelve-reason")
            yield Input(placeholder="expiry in minutes (1..480)", id="shelve-minutes",
                        type="number")
            yield Static("", id="shelve-why")
            with Horizontal(classes="buttons"):
                yield Button("Shelve", id="shelve-yes", variant="warning")
                yield Button("Cancel", id="shelve-no")

    @on(Button.Pressed, "#shelve-yes")
    def _yes(self) -> None:
        rule = self.query_one("#shelve-rule", Select).value
        reason = self.query_one("#shelve-reason", Input).value.strip()
        minutes = self.query_one("#shelve-minutes", Input).value.strip()
        why = self.query_one("#shelve-why", Static)
        if not isinstance(rule, str):
            why.update("Choose the rule.")
            return
        if not reason:
            why.update("A reason is required.")
            return
        try:
            expiry_min = float(minutes)
        except ValueError:
            why.update("The expiry is required (minutes).")
            return
        if not 0 < expiry_min <= 480:
            why.update("The expiry must be 1..480 minutes.")
            return
        self.dismiss(ShelveRequest(rule, reason, expiry_min * 60.0))

    @on(Button.Pressed, "#shelve-no")
    def _no(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


# --- login -------------------------------------------------------------------------------------


class LoginScreen(Screen[None]):
    """Operator id and PIN; the role comes from the users file (``role_of``) when the console
    can read it, else the operator chooses it (the service checks it either way)."""

    def compose(self) -> ComposeResult:
        app = self.console
        with Vertical(id="login"):
            yield Label(Text(f"syncctl console: room {app.room_id}", style="bold"))
            yield Static("Log in with your operator id and PIN.")
            yield Input(placeholder="operator id", id="login-id")
            yield Input(placeholder="PIN", password=True, id="login-pin")
            if app.role_of is None:
                yield Select([(r, r) for r in ROLES], value="operator", allow_blank=False,
                             id="login-role")
            yield Button("Log in", id="login-go", variant="primary")
            yield Static("", id="login-why")

    @property
    def console(self) -> ConsoleApp:
        assert isinstance(self.app, ConsoleApp)
        return self.app

    def on_mount(self) -> None:
        self.query_one("#login-id", Input).focus()

    @on(Input.Submitted, "#login-id")
    def _to_pin(self) -> None:
        self.query_one("#login-pin", Input).focus()

    @on(Input.Submitted, "#login-pin")
    @on(Button.Pressed, "#login-go")
    def _go(self) -> None:
        operator = self.query_one("#login-id", Input).value.strip()
        pin = self.query_one("#login-pin", Input).value
        if not operator or not pin:
            self.query_one("#login-why", Static).update("Enter the operator id and the PIN.")
            return
        role: Role
        if self.console.role_of is not None:
            # an id the console does not know is still sent: the service refuses it with the
            # same words as a wrong PIN, so that ids cannot be probed
            role = self.console.role_of(operator) or "viewer"
        else:
            value = self.query_one("#login-role", Select).value
            role = value if isinstance(value, str) and value in ROLES else "viewer"
        self.query_one("#login-why", Static).update("checking...")
        self._login(operator, role, pin)

    @work(exclusive=True, group="login")
    async def _login(self, operator: str, role: Role, pin: str) -> None:
        why = self.query_one("#login-why", Static)
        try:
            await self.console.client.login(operator, role, pin)
        except LoginRefused as exc:
            why.update(Text(f"Login refused: {exc.ack.reason}", style="bold red"))
            self.query_one("#login-pin", Input).value = ""
            return
        except TimeoutError:
            why.update(Text("Login refused: the room service did not answer (is the "
                            "controller running?)", style="bold red"))
            return
        self.console.logged_in()


# --- main screen -------------------------------------------------------------------------------


class Panel(Static):
    """A bordered panel with a title."""

    def __init__(self, title: str, *, id: str) -> None:
        super().__init__("", id=id, classes="panel")
        self.border_title = title


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[Bindings] = [
        *[Binding(a.key, f"act('{a.command}')", a.label, show=False) for a in ACTIONS],
        Binding("t", "axis", "Trace axis", show=False),
        Binding("q", "quit_console", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("", id="banner")
        with Horizontal(id="top"):
            yield Panel("Mode", id="mode")
            yield Panel("Beam permit", id="beam")
            yield Panel("X-ray permit", id="xray")
        with Horizontal(id="middle"):
            with Vertical(id="left"):
                yield Panel("Gating trace", id="trace")
                with Vertical(id="bars", classes="panel") as bars:
                    bars.border_title = "Dose and imaging"
                    yield Label("", id="dose-label")
                    yield ProgressBar(total=1.0, show_eta=False, id="dose-bar")
                    yield Label("", id="mas-label")
                    yield ProgressBar(total=1.0, show_eta=False, id="mas-bar")
                yield Panel("Alarms", id="alarms")
                yield Panel("Event log (newest first, per-room sequence numbers)",
                            id="events")
            with Vertical(id="right"):
                yield Panel("Interlocks (every rule)", id="interlocks")
        with Horizontal(id="actions"):
            for a in ACTIONS:
                yield Button(f"{a.label} ({a.key})", id=f"do-{a.command}", compact=True)
        yield Static("", id="ack")
        yield Footer()

    @property
    def console(self) -> ConsoleApp:
        assert isinstance(self.app, ConsoleApp)
        return self.app

    def on_mount(self) -> None:
        self.events_text = Text()
        self.rule_styles: dict[str, str] = {}
        self.interlocks_plain = ""
        self._seen: dict[str, tuple[int | None, ...]] = {}
        self.refresh_view()
        self.set_interval(REFRESH_S, self.refresh_view)

    # -- drawing -------------------------------------------------------------------------------

    def refresh_view(self) -> None:
        """Redraw what changed since the last refresh (the console runs in the controller's
        event loop in `syncctl demo --console`: it must stay light)."""
        c = self.console
        client, state = c.client, c.client.state
        self._banner()
        if self._changed("state", state, client.status, client.role):
            self._mode_and_permits(state)
            self._bars(state)
            for a in ACTIONS:
                why = c.why_not(a.command)
                button = self.query_one(f"#do-{a.command}", Button)
                button.disabled = bool(why)
                button.tooltip = why or a.does
        if self._changed("trace", client.telemetry):
            self._trace()
        if self._changed("alarms", client.alarms):
            self._alarms()
        if self._changed("interlocks", client.interlocks):
            self._interlocks()
        last = client.events[-1] if client.events else None
        if self._changed("events", last):
            self._events()

    def _changed(self, part: str, *seen: object) -> bool:
        key = tuple(id(x) if x is not None else None for x in seen)
        if self._seen.get(part) == key:
            return False
        self._seen[part] = key
        return True

    def _mode_and_permits(self, state: RoomState | None) -> None:
        c = self.console
        mode = state.mode if state is not None else "OFFLINE"
        plan = f"plan {state.plan_id}" if state is not None and state.plan_id else "no plan"
        who = f"{c.client.operator} ({c.client.role})"
        self.query_one("#mode", Static).update(Text.assemble(
            (f"  {mode}  ", f"bold {MODE_STYLE.get(mode, '')}"), "\n",
            f"{plan}\n{who}\nroom {c.room_id}"))
        for wid, permit, name in (("#beam", state.beam_permit if state else None, "beam"),
                                  ("#xray", state.xray_permit if state else None, "X-ray")):
            text = Text()
            if permit is None:
                text.append("unknown", style="bold")
            elif permit.granted:
                text.append("GRANTED", style="bold black on green")
            else:
                text.append("DENIED", style="bold white on red")
                for r in permit.denied_by:
                    text.append(f"\n{r.rule_id} ", style="bold")
                    text.append(r.text)
            if state is not None and name == "beam":
                text.append(f"\ngate command: {state.gate}")
            if state is not None and name == "X-ray":
                text.append(f"\nX-ray command: {state.xray}")
            self.query_one(wid, Static).update(text)

    def _banner(self) -> None:
        c, banner = self.console, self.query_one("#banner", Static)
        problems = []
        if not c.client.bus.connected:
            problems.append("BUS OFFLINE: not connected to the room")
        status = c.client.status
        if (status is not None and status.controller == "offline") or (
                c.client.state is not None and not c.client.state.controller_online):
            problems.append("CONTROLLER OFFLINE: the values shown are the last known")
        if c.client.state is None:
            problems.append("waiting for the room's state")
        telemetry_gap = telemetry_gap_text(c.client.telemetry_gaps)
        if telemetry_gap:
            problems.append(telemetry_gap)
        missing = c.client.missing
        if missing:
            problems.append(f"event gap: {len(missing)} events missing (seq {missing[0]}..)")
        banner.update(Text("  |  ".join(problems), style="bold white on red"))
        banner.display = bool(problems)

    def _trace(self) -> None:
        c = self.console
        tel = c.client.telemetry
        head = Text(f"axis {AXES[c.trace.axis]} [t: next axis]: target - window centre (mm), "
                    "window ░, target ●, gate █ open, spill ▀")
        if tel is not None:
            pos = ("none" if tel.target_mm is None
                   else ", ".join(f"{v:.1f}" for v in tel.target_mm))
            conf = "-" if tel.tracking_confidence is None else f"{tel.tracking_confidence:.2f}"
            head.append(f"\ntarget ({pos}) mm, confidence {conf}, "
                        f"{'INSIDE' if tel.inside else 'outside'} window, gate {tel.gate_command}")
        body = "\n".join(c.trace.render(width=max(20, self.query_one("#trace").size.width - 12)))
        self.query_one("#trace", Static).update(Text.assemble(head, "\n", body))

    def _bars(self, state: RoomState | None) -> None:
        planned = state.planned_dose_mu if state is not None else None
        delivered = state.delivered_dose_mu if state is not None else None
        dose_bar = self.query_one("#dose-bar", ProgressBar)
        if planned:
            d = delivered or 0.0
            self.query_one("#dose-label", Label).update(
                f"Dose: {d:.2f} of {planned:g} MU planned")
            dose_bar.update(total=planned, progress=min(d, planned))
        else:
            self.query_one("#dose-label", Label).update("Dose: no plan selected")
            dose_bar.update(total=1.0, progress=0.0)
        budget = state.imaging_budget_mas if state is not None else 0.0
        mas = (state.imaging_mas or 0.0) if state is not None else 0.0
        self.query_one("#mas-label", Label).update(
            f"Imaging: {mas:.1f} of {budget:g} mAs budget")
        self.query_one("#mas-bar", ProgressBar).update(total=budget or 1.0,
                                                       progress=min(mas, budget or 1.0))

    def _alarms(self) -> None:
        alarms = self.console.client.alarms
        text = Text()
        if alarms is None or (not alarms.active and not alarms.shelved):
            text.append("none")
        else:
            for a in alarms.active:
                flags = [f for f, on_ in (("latched", a.latched), ("acknowledged", a.acknowledged),
                                          ("shelved", a.shelved)) if on_]
                style = "bold red" if not a.acknowledged else "yellow"
                text.append(f"{a.rule_id} ", style=style)
                text.append(f"{a.text} [{', '.join(flags) or 'active'}]\n")
            for s in alarms.shelved:
                text.append(f"{s.rule_id} shelved by {s.by} until {s.until_utc[11:19]} UTC: "
                            f"{s.reason}\n", style="magenta")
        self.query_one("#alarms", Static).update(text)

    def _interlocks(self) -> None:
        table = Table(box=None, pad_edge=False, expand=True, show_edge=False)
        for col in ("id", "name", "class", "state"):
            table.add_column(col, no_wrap=True, overflow="ellipsis")
        il = self.console.client.interlocks
        rows: list[str] = []
        for r in il.rules if il is not None else []:
            states = [s for s, on_ in (("ACTIVE", r.active), ("LATCHED", r.latched),
                                       ("shelved", r.shelved)) if on_]
            style = "bold white on red" if r.latched or (
                r.active and r.rule_class == "termination") else (
                "bold yellow" if r.active else "")
            table.add_row(r.rule_id, r.name, r.rule_class, " ".join(states) or "ok", style=style)
            self.rule_styles[r.rule_id] = style
            rows.append(f"{r.rule_id} {r.name} {r.rule_class} {' '.join(states) or 'ok'}")
        self.interlocks_plain = "\n".join(rows)
        self.query_one("#interlocks", Static).update(table)

    def _events(self) -> None:
        events = list(self.console.client.events)[-40:]
        text = Text()
        for e in reversed(events):
            style = ("bold white on red" if e.kind == "trip" else
                     "red" if e.kind in ("command_refused", "command_unauthorised") else "")
            rules = f" {','.join(e.rule_ids)}" if e.rule_ids else ""
            text.append(f"#{e.seq:<4} {e.utc[11:19]} {e.kind}{rules}: {e.message}\n",
                        style=style)
        self.events_text = text
        self.query_one("#events", Static).update(text)

    # -- actions -------------------------------------------------------------------------------

    def action_act(self, command: str) -> None:
        self.console.request(command)

    def action_axis(self) -> None:
        self.console.trace.axis = (self.console.trace.axis + 1) % 3
        self.console.trace.samples.clear()

    def action_quit_console(self) -> None:
        self.console.ask_quit()

    @on(Button.Pressed, "#actions Button")
    def _button(self, event: Button.Pressed) -> None:
        assert event.button.id is not None
        self.console.request(event.button.id.removeprefix("do-"))


CSS = """
#banner { height: auto; }
.panel { border: round $primary; padding: 0 1; }
#top { height: 8; }
#mode { width: 26; }
#beam, #xray { width: 1fr; }
#top .panel { height: 100%; }
#bars ProgressBar { width: 100%; }
#bars Bar { width: 1fr; }
#middle { height: 1fr; }
#left { width: 1fr; }
#right { width: 72; }
#trace { height: 17; }
#bars { height: 6; }
#alarms { height: auto; min-height: 3; max-height: 8; }
#events { height: 1fr; }
#interlocks { height: 1fr; }
#actions { height: 1; }
#actions Button { margin: 0 1 0 0; }
#ack { height: 2; }
#login { width: 60; height: auto; border: round $primary; padding: 1 2; }
LoginScreen { align: center middle; }
ConfirmScreen, BeamOnScreen, PlanScreen, ShelveScreen { align: center middle; }
#dialog { width: 70; height: auto; border: thick $warning; padding: 1 2; background: $surface; }
#dialog.beam { border: thick $error; }
.buttons { height: auto; margin-top: 1; }
"""


class ConsoleApp(App[None]):
    """The operator console of one room over ``client`` (started or not)."""

    CSS = CSS
    TITLE = "syncctl console"

    def __init__(self, client: BusClient, *, room_id: str, plans: list[PlanChoice],
                 role_of: Callable[[str], Role | None] | None = None,
                 ends_run: bool = False) -> None:
        super().__init__()
        self.client = client
        self.room_id = room_id
        self.plans = plans
        self.role_of = role_of
        self.ends_run = ends_run
        """Quitting ends the run (`syncctl demo --console`): the quit dialog says so."""
        self.trace = Trace()
        self.acks: deque[Ack] = deque(maxlen=50)
        self.busy = False
        client.on(Telemetry, self.trace.add)

    async def on_mount(self) -> None:
        if not self.client._subs:
            await self.client.start()
        await self.push_screen(LoginScreen())

    def logged_in(self) -> None:
        self.switch_screen(MainScreen())

    # -- actions -------------------------------------------------------------------------------

    def why_not(self, command: str) -> str:
        status = self.client.status
        online = self.client.bus.connected and not (
            status is not None and status.controller == "offline")
        return why_not(command, self.client.role, self.client.state, self.room_id,
                       online=online)

    def say(self, text: Text | str) -> None:
        if isinstance(self.screen, MainScreen):
            self.screen.query_one("#ack", Static).update(text)

    def request(self, command: str) -> None:
        """Check, ask for confirmation, send, show the ack."""
        action = ACTIONS_BY_COMMAND[command]
        why = self.why_not(command)
        if why:
            self.say(Text(f"{action.label}: not available: {why}", style="bold yellow"))
            return
        if self.busy:
            self.say("waiting for the previous command's answer")
            return
        if command == "select_plan":
            def chosen(plan_id: str | None) -> None:
                if plan_id is not None:
                    self._confirm(command, f"Select plan {plan_id}: {action.does}.",
                                  plan_id=plan_id)
            self.push_screen(PlanScreen(self.plans), chosen)
        elif command == "beam_on":
            state = self.client.state
            plan = state.plan_id if state is not None else "?"
            planned = state.planned_dose_mu if state is not None else None

            def confirmed(yes: bool | None) -> None:
                if yes:
                    self._send(command)
                else:
                    self.say("Beam on: not confirmed, nothing sent")
            self.push_screen(BeamOnScreen(f"Plan {plan}, planned {planned} MU: "
                                          f"{action.does}."), confirmed)
        elif command == "shelve":
            alarms = self.client.alarms
            rules = sorted({a.rule_id for a in alarms.active} if alarms is not None else set())
            shelvable = [r for r in rules if r in RULES_BY_ID
                         and RULES_BY_ID[r].rule_class is not RuleClass.TERMINATION]
            if not shelvable:
                self.say(Text("Shelve: no active interruption alarm to shelve",
                              style="bold yellow"))
                return

            def shelve(req: ShelveRequest | None) -> None:
                if req is not None:
                    self._confirm(command, f"Shelve {req.rule_id} for {req.expiry_s / 60:g} "
                                  f"min, reason: {req.reason}. {action.does}.",
                                  rule_id=req.rule_id, reason=req.reason, expiry_s=req.expiry_s)
            self.push_screen(ShelveScreen(shelvable), shelve)
        else:
            self._confirm(command, f"{action.label}: {action.does}.")

    def _confirm(self, command: str, what: str, **fields: Any) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._send(command, **fields)
            else:
                self.say(f"{ACTIONS_BY_COMMAND[command].label}: cancelled, nothing sent")
        self.push_screen(ConfirmScreen(ACTIONS_BY_COMMAND[command].label, what), answered)

    @work(group="commands")
    async def _send(self, command: str, **fields: Any) -> None:
        label = ACTIONS_BY_COMMAND[command].label
        self.busy = True
        self.say(f"{label}: sent, waiting for the answer...")
        try:
            ack = await self.client.send(command, **fields)
        except TimeoutError:
            self.say(Text(f"{label}: NO ANSWER from the room service in time",
                          style="bold red"))
            return
        finally:
            self.busy = False
        self.acks.append(ack)
        if ack.result == "accepted":
            self.say(Text(f"{label}: accepted (mode {ack.mode})", style="bold green"))
        else:
            self.say(Text(f"{label}: {ack.result.upper()}: {ack.reason} (mode {ack.mode})",
                          style="bold red"))

    def ask_quit(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()
        what = "Close the console (the room keeps running)." if not self.ends_run else (
            "End the run: the controller stops safely (gate closed, X-ray off) and the summary "
            "is printed.")
        self.push_screen(ConfirmScreen("Quit", what), answered)
