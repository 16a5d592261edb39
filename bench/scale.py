"""Scale: N simulated rooms on one machine, each a complete `syncctl demo` (its own
simulators, controller and ground truth), all at once. Reports, per N, each room's controller
CPU, cycle p99, gating and synchronizer latencies and outcome, and where the targets stop
being met. The baseline is N = 1 in the same run.

With ``--mqtt`` the rooms publish on ONE real mosquitto instead of the in-process bus: the
bench starts /usr/sbin/mosquitto on a free loopback port (password file made with
mosquitto_passwd, the ACL of configs/mosquitto/acl.example with its room blocks copied per
room, plus a read-only monitoring account), gives each room its own id (sim-1..sim-N) and
credentials, and counts the broker traffic with an independent ``mosquitto_sub`` on
``syncctl/#`` (messages and payload bytes per room and topic kind), the broker's CPU and its
``$SYS/broker`` counters.

    python bench/scale.py [--rooms 1,2,4] [--mqtt] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOM, ROOT, CpuMeter, emit, machine

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
ACL = ROOT / "configs" / "mosquitto" / "acl.example"
MONITOR = "bench-monitor"
STOP_TIMEOUT_S = 15.0
SYS_INTERVAL_S = 1
SYS_COUNTERS = ("messages/received", "messages/sent", "publish/messages/received",
                "publish/messages/sent", "publish/messages/dropped", "publish/bytes/received",
                "publish/bytes/sent", "bytes/received", "bytes/sent")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_rooms(n: int, tmp: Path, configs: list[Path] | None = None) -> list[dict[str, Any]]:
    """N demos at once; ``configs``: one room file per room (the MQTT mode), else the
    default simulated room on the in-process bus."""
    procs = []
    try:
        for i in range(n):
            out = tmp / f"n{n}-room{i}.json"
            config = [] if configs is None else ["--config", str(configs[i])]
            procs.append((out, subprocess.Popen(
                [PY, "-m", "syncctl", "demo", *config, "--quiet", "--no-record", "--seed",
                 str(i + 1), "--json", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)))
        rooms = []
        for i, (out, proc) in enumerate(procs):
            proc.wait(600)
            s: dict[str, Any] = (json.loads(out.read_text()) if out.exists()
                                 else {"final_state": "NO RESULT"})
            c = s.get("controller", {})
            room = {"final_state": s.get("final_state"),
                    "cpu_percent_of_one_core": c.get("cpu_percent_of_one_core"),
                    "cycle_p99_ms": c.get("cycle_p99_ms"), "overruns": c.get("overruns"),
                    "gating_latency_max_ms": s.get("gating_latency_ms", {}).get("max"),
                    "sync_latency_p99_ms": s.get("sync_latency_ms", {}).get("p99"),
                    "trips": s.get("trips")}
            if configs is not None:
                room = {"room_id": room_id(i), **room}
            rooms.append(room)
        return rooms
    finally:  # Ctrl-C, a timeout, an exception: no demo is left running
        for _, proc in procs:
            stop_process(proc)


# --- the MQTT mode ------------------------------------------------------------------------


def room_id(i: int) -> str:
    return f"sim-{i + 1}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """One mosquitto for the whole run, as tests/integration/test_mqtt.py starts it: a
    temporary config, a password file made with mosquitto_passwd and the shipped ACL (its
    sim-1 blocks copied for each room, as configs/mosquitto/README.md says for another room),
    plus a monitoring account that may read ``syncctl/#`` and ``$SYS/#`` and nothing else."""

    def __init__(self, workdir: Path, rooms: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.passwords = {f"syncctl-{room_id(i)}": secrets.token_urlsafe(16)
                          for i in range(rooms)}
        self.passwords[MONITOR] = secrets.token_urlsafe(16)
        passwd = workdir / "passwd"
        for i, (user, password) in enumerate(self.passwords.items()):
            subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd),
                            user, password], check=True, capture_output=True, timeout=30)
        shipped = ACL.read_text()
        assert shipped.count("user syncctl-sim-1\n") == 1, "acl.example changed"
        acl = workdir / "acl"
        acl.write_text("".join(shipped.replace("sim-1", room_id(i)) for i in range(rooms))
                       + f"\n# the bench's monitor\nuser {MONITOR}\ntopic read syncctl/#\n"
                       "topic read $SYS/#\n")
        lines = ["per_listener_settings false", "allow_anonymous false",
                 f"password_file {passwd}", f"acl_file {acl}", "persistence false",
                 f"sys_interval {SYS_INTERVAL_S}", f"listener {self.port} 127.0.0.1"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to "mosquitto", who cannot read tmp
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""

    def start(self, timeout_s: float = 15.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:  # ready: the monitor connects and reads the retained version
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.process.returncode}:\n"
                                   + self.log.read_text(errors="replace"))
            probe = subprocess.run(self.sub_args("-C", "1", "-W", "1", "-t",
                                                 "$SYS/broker/version"),
                                   check=False, capture_output=True, text=True, timeout=10)
            if probe.returncode == 0 and "mosquitto" in probe.stdout:
                self.version = probe.stdout.strip()
                return
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not accept the monitor in time: "
                                   + probe.stderr)
            time.sleep(0.1)

    def sub_args(self, *args: str) -> list[str]:
        return [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(self.port), "-u", MONITOR,
                "-P", self.passwords[MONITOR], *args]

    def sys_counters(self) -> dict[str, float]:
        """The broker's cumulative ``$SYS/broker`` counters (retained, updated every
        ``sys_interval``)."""
        out = subprocess.run(self.sub_args("-v", "--retained-only", "-W", "3", "-t",
                                           "$SYS/broker/#"),
                             check=False, capture_output=True, text=True, timeout=10).stdout
        found = {}
        for line in out.splitlines():
            topic, _, value = line.partition(" ")
            key = topic.removeprefix("$SYS/broker/")
            if key in SYS_COUNTERS:
                found[key] = float(value)
        return found

    def room_file(self, i: int) -> Path:
        """configs/room-sim.yaml with its own room id and MQTT on, to this broker, beside a
        copy of the register maps and users file (the config names them relative to it)."""
        rid = room_id(i)
        if not (self.workdir / "registers").exists():
            shutil.copytree(ROOT / "configs" / "registers", self.workdir / "registers")
            shutil.copy(ROOT / "configs" / "users-sim.yaml", self.workdir / "users-sim.yaml")
        credentials = self.workdir / f"mqtt-{rid}.yaml"
        credentials.write_text(f"username: syncctl-{rid}\n"
                               f"password: {self.passwords[f'syncctl-{rid}']}\n")
        credentials.chmod(0o600)
        text = ROOM.read_text()
        for old, new in (("\n  id: sim-1\n", f"\n  id: {rid}\n"),
                         ("mqtt:\n  enabled: false\n",
                          f"mqtt:\n  enabled: true\n  host: 127.0.0.1\n  port: {self.port}\n"
                          f"  credentials_file: {credentials.name}\n")):
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        path = self.workdir / f"room-{rid}.yaml"
        path.write_text(text)
        return path

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class Monitor:
    """An independent ``mosquitto_sub`` on ``syncctl/#``: messages and payload bytes per room
    and per topic kind, with the times of each room's first and last message. Retained
    messages delivered at subscription (earlier runs' rooms) are left out."""

    def __init__(self, broker: Broker) -> None:
        self.proc = subprocess.Popen(
            broker.sub_args("-q", "1", "-t", "syncctl/#", "-t", "$SYS/broker/version",
                            "-F", "%r %U %t %l"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ready = threading.Event()
        self.counts: dict[str, dict[str, list[int]]] = defaultdict(
            lambda: defaultdict(lambda: [0, 0]))
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.retained_skipped = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        if not self.ready.wait(15):
            self.stop()
            raise RuntimeError("the monitoring subscriber did not subscribe in time")
        self.cpu = CpuMeter(self.proc.pid)
        self.cpu.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            retained, stamp, topic, size = line.split()
            if topic.startswith("$SYS/"):
                self.ready.set()  # the subscriptions stand (one SUBSCRIBE for both)
                continue
            if retained == "1":
                self.retained_skipped += 1
                continue
            _, room, *rest = topic.split("/")
            kind = "acks" if rest[0] == "acks" else "/".join(rest)
            entry = self.counts[room][kind]
            entry[0] += 1
            entry[1] += int(size)
            t = float(stamp)
            self.first.setdefault(room, t)
            self.last[room] = t

    def stop(self) -> None:
        stop_process(self.proc)
        self.thread.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def figures(self) -> dict[str, Any]:
        per_room = {}
        for room in sorted(self.counts):
            kinds = self.counts[room]
            messages = sum(m for m, _ in kinds.values())
            size = sum(b for _, b in kinds.values())
            span = self.last[room] - self.first[room]
            per_room[room] = {
                "messages": messages, "payload_bytes": size, "span_s": round(span, 2),
                "messages_per_s": round(messages / span, 1) if span > 0 else None,
                "payload_bytes_per_s": round(size / span) if span > 0 else None,
                "by_kind": {k: {"messages": m, "payload_bytes": b,
                                "messages_per_s": round(m / span, 2) if span > 0 else None,
                                "payload_bytes_per_s": round(b / span) if span > 0 else None}
                            for k, (m, b) in sorted(kinds.items())}}
        total: dict[str, Any] = {"messages": sum(r["messages"] for r in per_room.values()),
                                 "payload_bytes": sum(r["payload_bytes"]
                                                      for r in per_room.values())}
        if self.first:
            span = max(self.last.values()) - min(self.first.values())
            total["span_s"] = round(span, 2)
            total["messages_per_s"] = round(total["messages"] / span, 1) if span > 0 else None
            total["payload_bytes_per_s"] = (round(total["payload_bytes"] / span)
                                            if span > 0 else None)
        return {"total": total, "per_room": per_room,
                "retained_at_subscribe_skipped": self.retained_skipped}


def run_mqtt(n: int, broker: Broker, tmp: Path) -> dict[str, Any]:
    """N demos against the broker, watched by a fresh monitor; the broker's CPU and its
    $SYS counter deltas over the same minutes."""
    configs = [broker.room_file(i) for i in range(n)]
    time.sleep(2 * SYS_INTERVAL_S)  # the $SYS values settled since the last run
    before = broker.sys_counters()
    monitor = Monitor(broker)
    try:
        assert broker.process is not None
        broker_cpu = CpuMeter(broker.process.pid)
        broker_cpu.start()
        t0 = time.monotonic()
        rooms = run_rooms(n, tmp, configs)
        wall = time.monotonic() - t0
        figures: dict[str, Any] = {"wall_s": round(wall, 2),
                   "broker_cpu_percent_of_one_core": round(broker_cpu.percent(), 2),
                   "monitor_cpu_percent_of_one_core": round(monitor.cpu.percent(), 2)}
        time.sleep(1.0)  # the last messages reach the monitor
    finally:
        monitor.stop()
    time.sleep(2 * SYS_INTERVAL_S)
    after = broker.sys_counters()
    figures.update(monitor.figures())
    figures["sys_broker_delta"] = {k: after[k] - before[k] for k in SYS_COUNTERS
                                   if k in after and k in before}
    return {"rooms": rooms, "broker": figures}


def source_state() -> dict[str, Any]:
    """The commit the demos ran, and whether src/ or firmware_sim/ differed from it (others
    may be editing the same working tree)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "src_modified": bool(git("status", "--porcelain", "--", "src", "firmware_sim"))}


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that every finally: stops what the bench started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", default="1,2,4", help="comma-separated room counts")
    p.add_argument("--mqtt", action="store_true",
                   help="the rooms on one real mosquitto (started here), with broker traffic")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _terminated)
    counts = [int(v) for v in args.rooms.split(",")]
    result: dict[str, Any] = {"benchmark": "scale", "machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as t:
        if not args.mqtt:
            for n in counts:
                rooms = run_rooms(n, Path(t))
                ok = all(r["final_state"] == "COMPLETE" for r in rooms)
                result["runs"][str(n)] = {"all_complete": ok, "rooms": rooms}
                print(f"{n} room(s): all complete {ok}; cycle p99 "
                      f"{[r['cycle_p99_ms'] for r in rooms]} ms", file=sys.stderr, flush=True)
        else:
            (Path(t) / "broker").mkdir()
            broker = Broker(Path(t) / "broker", max(counts))
            try:
                broker.start()
                result["bus"] = {"kind": "mqtt", "broker": broker.version,
                                 "sys_interval_s": SYS_INTERVAL_S}
                result["source"] = source_state()
                for n in counts:
                    run = run_mqtt(n, broker, Path(t))
                    ok = all(r["final_state"] == "COMPLETE" for r in run["rooms"])
                    result["runs"][str(n)] = {"all_complete": ok, **run}
                    b = run["broker"]
                    print(f"{n} room(s) on mosquitto: all complete {ok}; cycle p99 "
                          f"{[r['cycle_p99_ms'] for r in run['rooms']]} ms; broker CPU "
                          f"{b['broker_cpu_percent_of_one_core']} %; "
                          f"{b['total'].get('messages_per_s')} msg/s, "
                          f"{b['total'].get('payload_bytes_per_s')} B/s",
                          file=sys.stderr, flush=True)
                result["source_at_end"] = source_state()
            finally:
                broker.stop()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
