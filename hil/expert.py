"""The scripted expert that demonstrates (and repairs) steps in the reference world.

It is closed-loop: every tick it looks at the world and decides which phase it is in (approach, carry,
release, retreat, done), so it also finishes a step that a policy left half done. Its only memory is a few
random choices per step (grasp offset, drop point, retreat point) and how many ``done`` ticks it has sent.
"""

from __future__ import annotations

import copy

import numpy as np

from hil.tasks import Step, parse_instruction
from hil.world import ACTION_DIM, BIN_RECTS, COLOURS, GRASP_RADIUS, MAX_STEP, TabletopWorld, bin_of

_ARRIVED = 0.005  # the gripper lands exactly on its target, so this only absorbs a block still sliding
_DROP_MARGIN = 0.05  # keep the drop point this far inside the bin's edges
_DROP_CLEARANCE = 0.12  # > a block's diagonal: a dropped block touches no other block
_DROP_CANDIDATES = 64
_RETREAT_DISTANCE = 0.12  # back off toward the middle of the table so the gripper clears the block
_WORKSPACE_CENTRE = np.array([0.5, 0.5])


class ScriptedExpert:
    """Moves to the block, closes, carries it to a free random point in the bin, opens, retreats, then sends
    ``done=1`` for ``done_ticks`` ticks while holding still.

    ``noise`` is the standard deviation (workspace units) of the random grasp offset and of a jitter added to
    far-away travel targets, so demonstrations vary a little around the ideal path.
    """

    def __init__(self, rng: np.random.Generator, noise: float = 0.01, done_ticks: int = 3) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if done_ticks < 1:
            raise ValueError(f"done_ticks must be >= 1, got {done_ticks}")
        self._rng = rng
        self._noise = noise
        self._done_ticks = done_ticks
        self._step: Step | None = None

    def reset(self, step: Step) -> None:
        self._step = step
        offset = self._rng.normal(0.0, self._noise, size=2)
        limit = 0.4 * GRASP_RADIUS
        norm = float(np.linalg.norm(offset))
        self._grasp_offset = offset * (limit / norm) if norm > limit else offset
        self._drop: np.ndarray | None = None
        self._retreat: np.ndarray | None = None
        self._done_sent = 0

    @property
    def step(self) -> Step | None:
        return self._step

    @property
    def finished(self) -> bool:
        """True once all ``done`` ticks of the current step have been sent."""
        return self._done_sent >= self._done_ticks

    def act(self, world: TabletopWorld) -> np.ndarray:
        """The action ``[target_x, target_y, grip, done]`` for this tick."""
        if self._step is None:
            raise RuntimeError("ScriptedExpert.act called before reset(step)")
        colour, target_bin = self._step.colour, self._step.bin
        here = world.gripper_position()
        held = world.held_block()

        if held is not None and held != colour:
            return _action(here, here, grip=0.0)  # let go of the wrong block where it is
        if held == colour:
            drop = self._drop_point(world)
            if np.linalg.norm(drop - here) < _ARRIVED:
                return _action(here, drop, grip=0.0)
            return _action(here, self._jitter(drop, here), grip=1.0)

        block = world.block_position(colour)
        if bin_of(block) == target_bin:
            retreat = self._retreat_point(block)
            if np.linalg.norm(retreat - here) < _ARRIVED:
                self._done_sent += 1
                return _action(here, retreat, grip=0.0, done=1.0)
            return _action(here, self._jitter(retreat, here), grip=0.0)

        grasp = block + self._grasp_offset
        if np.linalg.norm(grasp - here) < _ARRIVED:
            return _action(here, grasp, grip=1.0)
        return _action(here, self._jitter(grasp, here), grip=0.0)

    def _drop_point(self, world: TabletopWorld) -> np.ndarray:
        if self._drop is None:
            assert self._step is not None
            rect = BIN_RECTS[self._step.bin]
            others = [world.block_position(c) for c in COLOURS if c != self._step.colour]
            low = np.array([rect.x0 + _DROP_MARGIN, rect.y0 + _DROP_MARGIN])
            high = np.array([rect.x1 - _DROP_MARGIN, rect.y1 - _DROP_MARGIN])
            candidates = self._rng.uniform(low, high, size=(_DROP_CANDIDATES, 2))
            clearance = np.min(np.linalg.norm(candidates[:, None, :] - np.array(others)[None], axis=2), axis=1)
            good = np.flatnonzero(clearance >= _DROP_CLEARANCE)
            # A crowded bin may have no clear spot: take the roomiest one; physics settles any contact.
            self._drop = candidates[good[0] if good.size else int(np.argmax(clearance))]
        return self._drop

    def _retreat_point(self, block: np.ndarray) -> np.ndarray:
        if self._retreat is None:
            away = _WORKSPACE_CENTRE - block
            norm = float(np.linalg.norm(away))
            direction = away / norm if norm > 1e-9 else np.array([0.0, 1.0])
            point = block + direction * _RETREAT_DISTANCE + self._rng.normal(0.0, self._noise, size=2)
            self._retreat = np.clip(point, 0.0, 1.0)
        return self._retreat

    def _jitter(self, target: np.ndarray, here: np.ndarray) -> np.ndarray:
        # Jitter only while far away, so the final approach (grasp, drop) stays exact.
        if self._noise == 0 or np.linalg.norm(target - here) <= 2 * MAX_STEP:
            return target
        return target + self._rng.normal(0.0, self._noise, size=2)


def _action(here: np.ndarray, waypoint: np.ndarray, grip: float, done: float = 0.0) -> np.ndarray:
    # Command the next point on the way (at most MAX_STEP away), not the far waypoint: chunks become smooth
    # trajectories that respect the speed limit, and the command equals what the gripper actually does.
    delta = np.clip(waypoint, 0.0, 1.0) - here
    distance = float(np.linalg.norm(delta))
    if distance > MAX_STEP:
        delta *= MAX_STEP / distance
    action = np.empty(ACTION_DIM, dtype=np.float32)
    action[:2] = here + delta
    action[2] = grip
    action[3] = done
    return action


class ExpertChunkPolicy:
    """The scripted expert as a ``ChunkPolicy``: it plans ``horizon`` actions ahead on a scratch copy of the
    world (snapshot/restore), so receding-horizon execution sees real chunks, not a repeated action.

    It needs the live world (a privileged policy); ``image`` and ``state`` are ignored.
    """

    def __init__(self, world: TabletopWorld, rng: np.random.Generator, horizon: int = 8, noise: float = 0.01) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self._world = world
        self._scratch = TabletopWorld()
        self._rng = rng
        self._horizon = horizon
        self._noise = noise
        self._expert: ScriptedExpert | None = None

    def __call__(self, image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        step = parse_instruction(instruction)
        if self._expert is None or self._expert.step != step:
            self._expert = ScriptedExpert(self._rng, noise=self._noise)
            self._expert.reset(step)
        self._scratch.restore(self._world.snapshot())
        planner = copy.deepcopy(self._expert)  # the real expert's memory must not advance on a plan
        chunk = np.empty((self._horizon, ACTION_DIM), dtype=np.float32)
        for i in range(self._horizon):
            chunk[i] = planner.act(self._scratch)
            self._scratch.step(chunk[i])
        return chunk
