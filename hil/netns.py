"""Two network namespaces joined by veth pairs, with network faults injected by the kernel.

The daemon side and the robot side each get a network namespace of their own. Two veth pairs join them:

* the **data link** (``10.77.0.1`` daemon ⇄ ``10.77.0.2`` robot) carries what a real deployment sends over the
  network: the action stream (CURVE, as required off loopback) and the camera frames. Faults go here.
* the **control link** (``10.77.1.1`` ⇄ ``10.77.1.2``) carries only the test harness's sim channel (the judge and
  the simulated operator's expert moves), which a real robot does not have; it is never faulted.

Faults are set per direction, at the receiver, as the kernel does them without ``netem`` (this kernel has none):

* loss: ``iptables -m statistic --mode random --probability p -j DROP`` on the receiver's INPUT;
* blackhole: ``-j DROP`` on the receiver's INPUT (everything from the peer's data address);
* duplicate: the ``TEE`` target on the sender's mangle POSTROUTING (a copy of the packet is routed to the
  receiver again);
* delay / jitter / reorder: ``-j NFQUEUE`` on the receiver's INPUT, with `hil.netdelay` in the receiver's
  namespace holding each packet for ``delay ± jitter`` ms (jitter reorders packets, as a real network can).

Needs root, ``ip`` (iproute2), ``iptables`` and, for delay, the ``NetfilterQueue`` Python package
(``scripts/dev-setup.sh`` installs them). `netns_unavailable()` says why the current machine cannot, or None.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Side = Literal["daemon", "robot"]
Direction = Literal["to_robot", "to_daemon"]  # the receiver of the packets the fault applies to

DATA_IP = {"daemon": "10.77.0.1", "robot": "10.77.0.2"}
CONTROL_IP = {"daemon": "10.77.1.1", "robot": "10.77.1.2"}
_CHAIN = "VLA_FAULT"
_ROOT = Path(__file__).resolve().parent.parent


class LinkFault(BaseModel):
    """What one direction of the data link does to packets. All zero: a clean link."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: float = Field(0.0, ge=0, le=1, description="probability that a packet is dropped")
    blackhole: bool = Field(False, description="drop every packet")
    duplicate: float = Field(0.0, ge=0, le=1, description="probability that a packet is sent twice")
    delay_ms: float = Field(0.0, ge=0, le=5000)
    jitter_ms: float = Field(0.0, ge=0, le=5000, description="uniform ± around delay_ms; reorders packets")

    def describe(self) -> str:
        parts = []
        if self.blackhole:
            parts.append("blackhole")
        if self.loss:
            parts.append(f"{self.loss:.0%} loss")
        if self.duplicate:
            parts.append(f"{self.duplicate:.0%} duplicated")
        if self.delay_ms or self.jitter_ms:
            parts.append(f"{self.delay_ms:g}±{self.jitter_ms:g} ms delay" if self.jitter_ms else
                         f"{self.delay_ms:g} ms delay")
        return ", ".join(parts) or "clean"


class NetnsError(RuntimeError):
    """A namespace, link or fault could not be set up."""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout


def netns_unavailable(*, need_delay: bool = True) -> str | None:
    """Why this machine cannot run the namespace fault cases (one line), or None when it can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 iptables; scripts/dev-setup.sh does)"
    if need_delay:
        try:
            import netfilterqueue  # noqa: F401
        except ImportError:
            return "the NetfilterQueue package is missing (pip install NetfilterQueue; scripts/dev-setup.sh does)"
    probe = f"vlae-probe-{secrets.token_hex(3)}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "exec", probe, "iptables", "-L", "INPUT", "-n")
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a network namespace with iptables here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NetLink:
    """The two namespaces and their links; a context manager that removes everything it made on exit."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns: dict[Side, str] = {"daemon": f"vlae-{tag}-d", "robot": f"vlae-{tag}-r"}
        self._veth = {"data": (f"vd{tag}", f"vr{tag}"), "control": (f"cd{tag}", f"cr{tag}")}
        self._faults: dict[Direction, LinkFault] = {"to_robot": LinkFault(), "to_daemon": LinkFault()}
        self._delayers: dict[Direction, subprocess.Popen] = {}
        self._queue_num = {"to_robot": 1 + secrets.randbelow(30000), "to_daemon": 0}
        self._queue_num["to_daemon"] = self._queue_num["to_robot"] + 1
        self._up = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> NetLink:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        for side in ("daemon", "robot"):
            _run("ip", "netns", "add", self.ns[side])
            _run("ip", "-n", self.ns[side], "link", "set", "lo", "up")
        for link, ips in (("data", DATA_IP), ("control", CONTROL_IP)):
            d_if, r_if = self._veth[link]
            _run("ip", "link", "add", d_if, "netns", self.ns["daemon"], "type", "veth", "peer", "name", r_if,
                 "netns", self.ns["robot"])
            for side, ifname in (("daemon", d_if), ("robot", r_if)):
                _run("ip", "-n", self.ns[side], "addr", "add", f"{ips[side]}/24", "dev", ifname)
                _run("ip", "-n", self.ns[side], "link", "set", ifname, "up")
        for side in ("daemon", "robot"):
            self._ipt(side, "-N", _CHAIN)
            self._ipt(side, "-A", "INPUT", "-j", _CHAIN)
            self._ipt(side, "-t", "mangle", "-N", _CHAIN)
            self._ipt(side, "-t", "mangle", "-A", "POSTROUTING", "-j", _CHAIN)
        self._up = True

    def down(self) -> None:
        for proc in self._delayers.values():
            _stop(proc)
        self._delayers.clear()
        for side in ("daemon", "robot"):
            # Deleting a namespace removes its veth ends (and so the peers) and its iptables rules.
            subprocess.run(["ip", "netns", "del", self.ns[side]], capture_output=True)
        self._up = False

    # -- processes -----------------------------------------------------------------------------------------------
    def command(self, side: Side, argv: list[str]) -> list[str]:
        """``argv`` run inside ``side``'s namespace (the environment, PYTHONPATH included, is kept)."""
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def popen(self, side: Side, argv: list[str], **kwargs: object) -> subprocess.Popen:
        kwargs.setdefault("cwd", _ROOT)
        return subprocess.Popen(self.command(side, argv), **kwargs)  # type: ignore[call-overload]

    # -- faults ----------------------------------------------------------------------------------------------
    def fault(self, direction: Direction) -> LinkFault:
        return self._faults[direction]

    def set_fault(self, direction: Direction, fault: LinkFault) -> None:
        """Replace what the data link does to packets going ``direction`` (takes effect at once)."""
        receiver: Side = "robot" if direction == "to_robot" else "daemon"
        sender: Side = "daemon" if receiver == "robot" else "robot"
        source = DATA_IP[sender]
        self._ipt(receiver, "-F", _CHAIN)
        self._ipt(sender, "-t", "mangle", "-F", _CHAIN)
        old = self._delayers.pop(direction, None)
        if old is not None:
            _stop(old)
        if fault.blackhole:
            self._ipt(receiver, "-A", _CHAIN, "-s", source, "-j", "DROP")
        elif fault.loss:
            self._ipt(receiver, "-A", _CHAIN, "-s", source, "-m", "statistic", "--mode", "random",
                      "--probability", f"{fault.loss:.6f}", "-j", "DROP")
        if fault.duplicate:
            self._ipt(sender, "-t", "mangle", "-A", _CHAIN, "-d", DATA_IP[receiver], "-m", "statistic", "--mode",
                      "random", "--probability", f"{fault.duplicate:.6f}", "-j", "TEE", "--gateway",
                      DATA_IP[receiver])
        if (fault.delay_ms or fault.jitter_ms) and not fault.blackhole:
            queue = self._queue_num[direction]
            delayer = self.popen(receiver, [sys.executable, "-m", "hil.netdelay", "--queue", str(queue),
                                            "--delay-ms", str(fault.delay_ms), "--jitter-ms", str(fault.jitter_ms)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            line = delayer.stdout.readline() if delayer.stdout else ""
            if not line.startswith("ready"):
                _stop(delayer)
                raise NetnsError(f"the NFQUEUE delay program did not start: {line.strip()[:300]}")
            self._delayers[direction] = delayer
            # --queue-bypass: should the program die, packets pass instead of being dropped.
            self._ipt(receiver, "-A", _CHAIN, "-s", source, "-j", "NFQUEUE", "--queue-num", str(queue),
                      "--queue-bypass")
        self._faults[direction] = fault

    def clear(self) -> None:
        for direction in ("to_robot", "to_daemon"):
            self.set_fault(direction, LinkFault())

    def counters(self, side: Side) -> str:
        """The fault chain's packet counters in ``side`` (for reports and debugging)."""
        return self._ipt(side, "-L", _CHAIN, "-n", "-v", "-x")

    def _ipt(self, side: Side, *args: str) -> str:
        return _run("ip", "netns", "exec", self.ns[side], "iptables", "-w", "5", *args)


def _stop(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    if proc.stdout is not None:
        proc.stdout.close()


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout_s: float) -> str:
    """Read ``proc``'s stdout until a line starting with ``prefix``; the lines before it are discarded."""
    import selectors

    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:
                raise NetnsError(f"process exited (rc {proc.poll()}) before printing {prefix!r}")
            if line.startswith(prefix):
                return line
    raise NetnsError(f"no {prefix!r} line within {timeout_s:g} s")
