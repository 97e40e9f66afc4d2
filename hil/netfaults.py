"""Network-fault cases between two network namespaces (`hil.netns`), measured with real processes.

Each case starts the daemon side in one namespace and the robot side in the other, joined by a veth pair whose
faults the kernel injects, and returns its figures. `python -m hil.faults` prints them; `tests/stream/
test_stream_netns.py` asserts them. Both namespaces share the host's monotonic clock, so a command's actuation
time on the robot side is compared with its deadline on the daemon side directly: ground truth that neither
side's clock estimate enters.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hil.netns import DATA_IP, LinkFault, NetLink, wait_for_line
from vla_edge.config import StreamSettings
from vla_edge.keys import generate_keys

RATE_HZ = 50.0


def stream_settings(keys_dir: Path, **changes: object) -> StreamSettings:
    """The daemon's defaults (heartbeat 100 ms, stale after 300 ms, TTL 150 ms), CURVE on, on the data link."""
    base: dict[str, object] = dict(
        command_endpoint=f"tcp://{DATA_IP['daemon']}:5571", state_endpoint=f"tcp://{DATA_IP['daemon']}:5572",
        curve=True, keys_dir=keys_dir,
    )
    base.update(changes)
    return StreamSettings(**base)


@dataclass(frozen=True)
class DeadlineFigures:
    """What the robot side actuated under a fault, against the daemon side's deadlines (one shared clock)."""

    fault: str
    sent: int
    executed: int
    late: int  # actuated after the command's deadline
    early: int  # actuated before the command's due time
    worst_late_ms: float
    rejected_late: int
    offset_error_ms: float  # the controller's clock-offset estimate minus the truth (0: one clock)
    round_trip_ms: float

    def row(self) -> tuple[str, str, str]:
        return (f"netns: {self.fault}, daemon → controller",
                "no command actuated after its deadline" if not self.late else "ACTUATED LATE",
                f"{self.late} of {self.executed} executed late (worst {self.worst_late_ms:.0f} ms), "
                f"{self.rejected_late} rejected late, of {self.sent} sent; offset estimate off by "
                f"{self.offset_error_ms:+.0f} ms, round trip {self.round_trip_ms:.0f} ms")


def deadline_case(fault: LinkFault, *, duration_s: float = 4.0, ttl_ms: float = 150.0,
                  back: LinkFault | None = None) -> DeadlineFigures:
    """The soak's daemon peer (a smooth trajectory at 50 Hz) in one namespace, its controller peer in the other,
    ``fault`` on the daemon → controller direction (and ``back`` on the other). Counts actuations after their
    deadline or before their due time, judged on the one clock both namespaces share."""
    with tempfile.TemporaryDirectory() as tmp, NetLink() as link:
        keys = Path(tmp) / "keys"
        generate_keys(keys)
        settings = stream_settings(keys, command_ttl_ms=ttl_ms)
        link.set_fault("to_robot", fault)
        if back is not None:
            link.set_fault("to_daemon", back)
        daemon_ledger, controller_ledger = Path(tmp) / "daemon.json", Path(tmp) / "controller.json"
        peer = [sys.executable, "-m", "hil.soak"]
        common = ["--settings", settings.model_dump_json(), "--rate-hz", str(RATE_HZ), "--keys-dir", str(keys)]
        daemon = link.popen("daemon", [*peer, "daemon", *common, "--ledger", str(daemon_ledger)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        controller = link.popen("robot", [*peer, "controller", *common, "--ledger", str(controller_ledger)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_line(daemon, "daemon: controller ready", 60.0)
            time.sleep(duration_s)  # the measurement window: the peers run on their own clocks meanwhile
        finally:
            for proc in (daemon, controller):
                _terminate(proc)
        sent = {seq: (due, deadline) for seq, due, deadline in json.loads(daemon_ledger.read_text())["sent"]}
        ctl = json.loads(controller_ledger.read_text())
    executed = [(seq, t) for seq, t in ctl["executed"] if seq in sent]
    lateness = [(t - sent[seq][1]) / 1e6 for seq, t in executed]
    return DeadlineFigures(
        fault=fault.describe() + (f" (back: {back.describe()})" if back else ""),
        sent=len(sent), executed=len(executed), late=sum(1 for x in lateness if x > 0),
        early=sum(1 for seq, t in executed if t < sent[seq][0]),
        worst_late_ms=max(lateness, default=0.0), rejected_late=int(ctl["counters"].get("rejected_late", 0)),
        offset_error_ms=ctl["offset_ns"] / 1e6, round_trip_ms=ctl["round_trip_ns"] / 1e6,
    )


def _terminate(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    if proc.stdout is not None:
        proc.stdout.close()
