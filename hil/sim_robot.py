"""The simulated robot: the reference world behind a real motor-controller client and a real camera stream.

One process plays the robot the daemon talks to:

* its "motor controller" is `vla_edge.controller.ControllerClient` (the library a real controller runs), fed by
  the daemon's ZeroMQ action stream; whatever setpoint the client decides is what the world executes;
* its camera is a `hil.camera_publisher.FramePublisher` that the daemon's `SimSource` subscribes to;
* a small request/reply *sim channel* lets a test harness or the demo ask what only a simulator knows: the task
  chain for this layout, whether a step succeeded (the judge), and to let the scripted expert repair a failed
  step or suggest the operator's take-over moves. The daemon itself never uses it.

The controller side polls its client at 200 Hz, as real controllers run faster than the command stream; the
world advances one 0.1 s control tick whenever a command becomes due, or holds after a control period without
one. The measured state it reports is ``[gripper_x, gripper_y, grip, done]``: the first three are the policy's
``observation.state``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgpack
import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hil.camera_publisher import FramePublisher
from hil.expert import ScriptedExpert
from hil.tasks import Step, explain_step, make_chain, parse_instruction
from hil.world import CONTROL_RATE_HZ, MAX_STEP, TabletopWorld
from vla_edge.config import StreamSettings
from vla_edge.controller import ActionLimits, ControllerClient

log = logging.getLogger(__name__)

POLL_HZ = 200.0
SIM_LIMITS = ActionLimits(
    low=[0.0, 0.0, 0.0, 0.0],
    high=[1.0, 1.0, 1.0, 1.0],
    # Targets may lead the gripper a little (it moves MAX_STEP per tick); grip and done may toggle.
    max_delta=[2.5 * MAX_STEP, 2.5 * MAX_STEP, 1.0, 1.0],
)
_MAX_REQUEST_BYTES = 4096


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1


class ChainRequest(_Request):
    op: Literal["chain"] = "chain"
    n_steps: int = Field(10, ge=1, le=100)
    seed: int = 0


class BeginStepRequest(_Request):
    op: Literal["begin_step"] = "begin_step"
    instruction: str = Field(max_length=200)


class JudgeRequest(_Request):
    op: Literal["judge"] = "judge"


class RepairRequest(_Request):
    op: Literal["repair"] = "repair"
    max_ticks: int = Field(120, ge=1, le=1000)


class ExpertMoveRequest(_Request):
    op: Literal["expert_move"] = "expert_move"
    after_tick: int = Field(-1, ge=-1, description="Answer only once the world has ticked past this tick.")


SimRequest = Annotated[
    ChainRequest | BeginStepRequest | JudgeRequest | RepairRequest | ExpertMoveRequest, Field(discriminator="op")
]
_REQUEST_ADAPTER: TypeAdapter = TypeAdapter(SimRequest)


@dataclass(frozen=True)
class SimEndpoints:
    frames: str = "tcp://127.0.0.1:5570"
    sim: str = "tcp://127.0.0.1:5573"


class SimRobot:
    """The world, its controller client, its camera and the sim channel, stepped from one thread."""

    def __init__(self, seed: int, stream: StreamSettings, endpoints: SimEndpoints, keys_dir: Path | None = None):
        self.world = TabletopWorld(seed)
        self.seed = seed
        self._rng = np.random.default_rng(seed + 7919)
        start = np.concatenate([self.world.state()[:3], [0.0]])
        self.client = ControllerClient(stream, SIM_LIMITS, start, keys_dir=keys_dir)
        self.camera = FramePublisher(endpoints.frames)
        self._ctx = zmq.Context()
        self._sim = self._ctx.socket(zmq.REP)
        self._sim.setsockopt(zmq.LINGER, 0)
        self._sim.setsockopt(zmq.MAXMSGSIZE, _MAX_REQUEST_BYTES)
        self._sim.bind(endpoints.sim)
        self._period_ns = int(1e9 / CONTROL_RATE_HZ)
        self._last_world_tick_ns = 0
        self._last_done = 0.0
        self._step: Step | None = None
        self._bins_before: dict[str, str | None] | None = None
        self._repair: ScriptedExpert | None = None
        self._repair_ticks_left = 0
        self._operator_expert: ScriptedExpert | None = None
        self.ticks = 0
        self.publish_frames = True  # a test sets False to stall the camera while the arm keeps listening
        # (monotonic ns, seq or -1, holding reason) per world tick, for tests that check what was actuated when.
        self.actuations: deque[tuple[int, int, str]] = deque(maxlen=10_000)

    def close(self) -> None:
        self.client.close()
        self.camera.close()
        self._sim.close(0)
        self._ctx.term()

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.client.start()
        self._publish_frame()
        poll_ns = int(1e9 / POLL_HZ)
        next_ns = time.monotonic_ns()
        while not stop.is_set():
            self._serve_sim_channel()
            now = time.monotonic_ns()
            if self._repair is not None:
                if now - self._last_world_tick_ns >= self._period_ns:
                    self._repair_tick(now)
            else:
                setpoint = self.client.next_setpoint(now)
                if not setpoint.holding:
                    self._world_tick(now, setpoint.values, setpoint.seq)
                elif now - self._last_world_tick_ns >= self._period_ns:
                    self._world_tick(now, None, -1, setpoint.reason)
            next_ns += poll_ns
            delay = next_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            else:
                next_ns = time.monotonic_ns()

    def _world_tick(self, now: int, values: np.ndarray | None, seq: int = -1, reason: str = "") -> None:
        self.actuations.append((now, seq, reason))
        if values is None:
            self.world.hold()
        else:
            self.world.step(values)
            self._last_done = float(values[3])
        self._last_world_tick_ns = now
        self.ticks += 1
        self.client.report(self.measured())
        self._publish_frame()

    def _repair_tick(self, now: int) -> None:
        assert self._repair is not None
        action = self._repair.act(self.world)
        self.world.step(action)
        self._last_world_tick_ns = now
        self._repair_ticks_left -= 1
        self._publish_frame()
        if action[3] > 0.5 or self._repair_ticks_left <= 0:
            self._repair = None

    def measured(self) -> np.ndarray:
        return np.concatenate([self.world.state()[:3], [self._last_done]]).astype(np.float64)

    def _publish_frame(self) -> None:
        if self.publish_frames:
            self.camera.publish(self.world.render(), time.monotonic_ns())

    # -- the sim channel -------------------------------------------------------------------------------------
    def _serve_sim_channel(self) -> None:
        try:
            raw = self._sim.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            request = _REQUEST_ADAPTER.validate_python(msgpack.unpackb(raw, raw=False, max_str_len=512))
            reply = self._handle(request)
        except (ValidationError, ValueError, msgpack.UnpackException) as exc:
            reply = {"ok": False, "error": str(exc).splitlines()[0][:200]}
        self._sim.send(msgpack.packb(reply, use_bin_type=True))

    def _handle(self, request: BaseModel) -> dict:
        if isinstance(request, ChainRequest):
            chain = make_chain(np.random.default_rng(request.seed), self.world, request.n_steps)
            return {"ok": True, "instructions": [s.instruction for s in chain]}
        if isinstance(request, BeginStepRequest):
            self._step = parse_instruction(request.instruction)
            self._bins_before = self.world.block_bins()
            # One expert per step for the simulated operator, so its choices (drop point) stay put.
            self._operator_expert = ScriptedExpert(self._rng, noise=0.0)
            self._operator_expert.reset(self._step)
            return {"ok": True}
        if isinstance(request, JudgeRequest):
            if self._step is None:
                return {"ok": False, "error": "no step begun"}
            judgement = explain_step(self.world, self._step, self._bins_before)
            return {"ok": True, "success": judgement.success, "reason": judgement.reason}
        if isinstance(request, RepairRequest):
            if self._step is None:
                return {"ok": False, "error": "no step begun"}
            self._repair = ScriptedExpert(self._rng)
            self._repair.reset(self._step)
            self._repair_ticks_left = request.max_ticks
            return {"ok": True}
        if isinstance(request, ExpertMoveRequest):
            if self._operator_expert is None:
                return {"ok": False, "error": "no step begun"}
            if self.ticks <= request.after_tick:
                return {"ok": True, "pending": True, "tick": self.ticks}
            action = self._operator_expert.act(self.world)
            here = self.world.state()
            return {
                "ok": True,
                "pending": False,
                "tick": self.ticks,
                "dx": float(action[0] - here[0]),
                "dy": float(action[1] - here[1]),
                "grip": bool(action[2] > 0.5),
                "done": bool(action[3] > 0.5),
            }
        return {"ok": False, "error": "unknown request"}

    @property
    def repairing(self) -> bool:
        return self._repair is not None


class SimChannel:
    """Client of the sim channel, for harnesses (demo, benchmarks, tests). Never used by the daemon."""

    def __init__(self, endpoint: str = SimEndpoints.sim, timeout_s: float = 5.0) -> None:
        self._ctx = zmq.Context()
        self._endpoint = endpoint
        self._timeout_ms = int(timeout_s * 1000)
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self._timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self._timeout_ms)
        sock.connect(self._endpoint)
        return sock

    def call(self, **request: object) -> dict:
        try:
            self._socket.send(msgpack.packb(request, use_bin_type=True))
            reply = msgpack.unpackb(self._socket.recv(), raw=False)
        except zmq.Again:
            self._socket.close(0)
            self._socket = self._connect()
            raise TimeoutError(f"the simulated robot at {self._endpoint} did not answer") from None
        if not reply.get("ok"):
            raise RuntimeError(f"sim channel refused {request.get('op')}: {reply.get('error')}")
        return reply

    def chain(self, n_steps: int = 10, seed: int = 0) -> list[str]:
        return list(self.call(op="chain", n_steps=n_steps, seed=seed)["instructions"])

    def begin_step(self, instruction: str) -> None:
        self.call(op="begin_step", instruction=instruction)

    def judge(self) -> tuple[bool, str]:
        reply = self.call(op="judge")
        return bool(reply["success"]), str(reply["reason"])

    def repair(self, max_ticks: int = 120) -> None:
        self.call(op="repair", max_ticks=max_ticks)

    def expert_move(self) -> dict:
        return self.call(op="expert_move")

    def expert_move_if_new(self, after_tick: int) -> dict | None:
        """The expert's next move once the world has ticked past ``after_tick``; None while it has not."""
        reply = self.call(op="expert_move", after_tick=after_tick)
        return None if reply["pending"] else reply

    def close(self) -> None:
        self._socket.close(0)
        self._ctx.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sim_robot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", default=SimEndpoints.frames, help="where to publish camera frames")
    parser.add_argument("--sim", default=SimEndpoints.sim, help="the sim channel (judge, chain, repair)")
    parser.add_argument("--commands", default=StreamSettings().command_endpoint)
    parser.add_argument("--state", default=StreamSettings().state_endpoint)
    parser.add_argument("--no-curve", action="store_true", help="plain TCP (loopback only)")
    parser.add_argument("--keys-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sim_robot %(levelname)s %(message)s")
    stream = StreamSettings(command_endpoint=args.commands, state_endpoint=args.state, curve=not args.no_curve)
    if args.keys_dir is not None:
        stream = stream.model_copy(update={"keys_dir": args.keys_dir})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    robot = SimRobot(args.seed, stream, SimEndpoints(frames=args.frames, sim=args.sim))
    try:
        robot.run(stop)
    finally:
        robot.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
