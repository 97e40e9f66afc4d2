"""The simulated reference tabletop: a planar, top-down pymunk world rendered with OpenCV.

The workspace is the unit square, x to the right and y **down** (image convention), so a workspace point maps
to pixel ``(x * IMAGE_SIZE, y * IMAGE_SIZE)`` without flips. A kinematic gripper moves toward an absolute target
at most ``MAX_STEP`` per control tick; four dynamic square blocks slide on the table with Coulomb-like friction
(pivot/gear joints to the table with no bias, the usual top-down friction trick in Chipmunk), so pushes and
collisions are real physics. A grasped block is "lifted": it leaves the physics space and follows the gripper
rigidly until released, when it is put back where it is and collides again.

Run ``python -m hil.world --show --out frames.png`` to write a strip of frames for eyeballing.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pymunk

CONTROL_RATE_HZ: float = 10.0
IMAGE_SIZE = 96
COLOURS = ("red", "green", "blue", "yellow")
BINS = ("left", "right", "top", "bottom")
STATE_DIM = 3
ACTION_DIM = 4

MAX_STEP = 0.08  # workspace units the gripper may travel in one control tick
BLOCK_SIZE = 0.08
GRASP_RADIUS = 0.035  # < BLOCK_SIZE / 2: the gripper must be over the block to pick it
GRIPPER_RADIUS = 0.02  # collision radius of a closed, empty gripper (it pushes blocks)
BIN_DEPTH = 0.25  # how far a bin reaches in from its edge
BIN_SPAN = (0.25, 0.75)  # where along its edge a bin lies; the corners belong to no bin
SUBSTEPS = 10  # physics steps per control tick: 0.01 s each, so a push moves < 0.01 units per substep
SNAPSHOT_VERSION = 1

_TICK_S = 1.0 / CONTROL_RATE_HZ
_BLOCK_MASS = 1.0
_TABLE_FRICTION_FORCE = 5.0  # slows a block pushed at full speed to rest within ~0.1 units
_TABLE_FRICTION_TORQUE = 0.01
_BLOCK_CATEGORY = 0b01
_GRIPPER_CATEGORY = 0b10
_NO_COLLISIONS = pymunk.ShapeFilter(categories=0, mask=0)
_GRIPPER_PUSHES = pymunk.ShapeFilter(categories=_GRIPPER_CATEGORY, mask=_BLOCK_CATEGORY)
_BLOCK_FILTER = pymunk.ShapeFilter(categories=_BLOCK_CATEGORY, mask=pymunk.ShapeFilter.ALL_MASKS())
_LAYOUT_MIN_DISTANCE = 0.13  # > the diagonal of a block, so no two start touching whatever their angles
_LAYOUT_MARGIN = 0.06

# Drawing colours (RGB).
_TABLE_RGB = (196, 186, 166)
_BIN_FILL_RGB = (150, 140, 125)
_BIN_EDGE_RGB = (70, 62, 52)
_GRIPPER_RGB = (20, 20, 20)
BLOCK_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 210, 20),
}
_SUBPIXEL_BITS = 4  # OpenCV's fixed-point drawing: positions keep 1/16 px precision
_SUBPIXEL = 1 << _SUBPIXEL_BITS
_HALF_PIXEL = 0.5 / IMAGE_SIZE  # OpenCV puts pixel i's centre at coordinate i; the workspace puts it at i + 0.5


@dataclass(frozen=True)
class Rect:
    """An axis-aligned region of the workspace; a point on its boundary counts as outside."""

    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, point: np.ndarray | tuple[float, float]) -> bool:
        x, y = float(point[0]), float(point[1])
        return self.x0 < x < self.x1 and self.y0 < y < self.y1


BIN_RECTS: dict[str, Rect] = {
    "left": Rect(0.0, BIN_SPAN[0], BIN_DEPTH, BIN_SPAN[1]),
    "right": Rect(1.0 - BIN_DEPTH, BIN_SPAN[0], 1.0, BIN_SPAN[1]),
    "top": Rect(BIN_SPAN[0], 0.0, BIN_SPAN[1], BIN_DEPTH),
    "bottom": Rect(BIN_SPAN[0], 1.0 - BIN_DEPTH, BIN_SPAN[1], 1.0),
}


def bin_of(point: np.ndarray | tuple[float, float]) -> str | None:
    """The bin whose region contains ``point`` (bins do not overlap), or None."""
    for name, rect in BIN_RECTS.items():
        if rect.contains(point):
            return name
    return None


@dataclass
class _Block:
    colour: str
    body: pymunk.Body
    shape: pymunk.Poly
    friction: tuple[pymunk.Constraint, pymunk.Constraint]


class TabletopWorld:
    """Four blocks, four bins and a position-controlled gripper, stepped at ``CONTROL_RATE_HZ``."""

    def __init__(self, seed: int | None = None) -> None:
        """A world with the layout of ``seed``; None draws a fresh seed (kept in ``self.seed`` to reproduce)."""
        self._background = _draw_background()
        self.reset(int(np.random.SeedSequence().generate_state(1)[0] >> 1) if seed is None else seed)

    # ----------------------------------------------------------------------------------------------- layout
    def reset(self, seed: int) -> None:
        """A new random layout from ``seed``: blocks anywhere (in bins or not), never touching; gripper open."""
        rng = np.random.default_rng(seed)
        positions: list[np.ndarray] = []
        while len(positions) < len(COLOURS):
            candidate = rng.uniform(_LAYOUT_MARGIN, 1.0 - _LAYOUT_MARGIN, size=2)
            if all(np.linalg.norm(candidate - p) >= _LAYOUT_MIN_DISTANCE for p in positions):
                positions.append(candidate)
        angles = rng.uniform(-math.pi / 4, math.pi / 4, size=len(COLOURS))
        gripper = rng.uniform(0.3, 0.7, size=2)
        self._build(
            gripper=gripper,
            grip_closed=False,
            blocks={
                c: (p, float(a), np.zeros(2), 0.0) for c, p, a in zip(COLOURS, positions, angles, strict=True)
            },
            held=None,
            held_offset=np.zeros(2),
            tick=0,
        )
        self.seed = seed

    def arrange(
        self,
        blocks: dict[str, tuple[float, float]],
        gripper: tuple[float, float] = (0.5, 0.5),
        grip_closed: bool = False,
    ) -> None:
        """Put blocks at chosen centres (angle 0, at rest; unnamed blocks keep their place) and the gripper at
        ``gripper``, holding nothing. For tests and hand-made scenes; overlapping blocks get pushed apart."""
        unknown = set(blocks) - set(COLOURS)
        if unknown:
            raise ValueError(f"unknown block colours {sorted(unknown)}; expected some of {', '.join(COLOURS)}")
        current = {
            c: (self.block_position(c), self.block_angle(c), np.zeros(2), 0.0) for c in COLOURS if c not in blocks
        }
        current.update({c: (np.asarray(p, dtype=np.float64), 0.0, np.zeros(2), 0.0) for c, p in blocks.items()})
        for point in [gripper, *blocks.values()]:
            if np.shape(point) != (2,) or not np.all((np.asarray(point) >= 0.0) & (np.asarray(point) <= 1.0)):
                raise ValueError(f"arrange: {point!r} is not a point (x, y) inside the unit square")
        self._build(
            gripper=np.asarray(gripper, dtype=np.float64),
            grip_closed=grip_closed,
            blocks={c: current[c] for c in COLOURS},
            held=None,
            held_offset=np.zeros(2),
            tick=self.tick,
        )

    def _build(
        self,
        gripper: np.ndarray,
        grip_closed: bool,
        blocks: dict[str, tuple[np.ndarray, float, np.ndarray, float]],
        held: str | None,
        held_offset: np.ndarray,
        tick: int,
    ) -> None:
        # A fresh space each time, so a layout or a restored snapshot never inherits cached contacts.
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.collision_slop = 0.0005  # the default (0.1) is tuned for pixel units, not a unit square
        # Resolve overlaps (a block dropped onto another) within a tick or two; the default takes about a second
        # because table friction soaks up the gentle separating push.
        space.collision_bias = (1.0 - 0.3) ** 60
        walls = [((0, 0), (1, 0)), ((1, 0), (1, 1)), ((1, 1), (0, 1)), ((0, 1), (0, 0))]
        for a, b in walls:
            wall = pymunk.Segment(space.static_body, a, b, 0.01)
            wall.friction = 0.5
            space.add(wall)

        gripper_body = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        gripper_body.position = (float(gripper[0]), float(gripper[1]))
        gripper_shape = pymunk.Circle(gripper_body, GRIPPER_RADIUS)
        gripper_shape.friction = 0.5
        space.add(gripper_body, gripper_shape)

        self._blocks: dict[str, _Block] = {}
        for colour, (position, angle, velocity, angular_velocity) in blocks.items():
            body = pymunk.Body(_BLOCK_MASS, pymunk.moment_for_box(_BLOCK_MASS, (BLOCK_SIZE, BLOCK_SIZE)))
            body.position = (float(position[0]), float(position[1]))
            body.angle = float(angle)
            body.velocity = (float(velocity[0]), float(velocity[1]))
            body.angular_velocity = float(angular_velocity)
            shape = pymunk.Poly.create_box(body, (BLOCK_SIZE, BLOCK_SIZE))
            shape.friction = 0.5
            shape.elasticity = 0.0
            shape.filter = _BLOCK_FILTER
            slide = pymunk.PivotJoint(space.static_body, body, (0, 0), (0, 0))
            slide.max_bias = 0.0
            slide.max_force = _TABLE_FRICTION_FORCE
            spin = pymunk.GearJoint(space.static_body, body, 0.0, 1.0)
            spin.max_bias = 0.0
            spin.max_force = _TABLE_FRICTION_TORQUE
            self._blocks[colour] = _Block(colour, body, shape, (slide, spin))
            if colour != held:
                space.add(body, shape, slide, spin)

        self._space = space
        self._gripper = gripper_body
        self._gripper_shape = gripper_shape
        self._grip_closed = grip_closed
        self._held = held
        self._held_offset = np.asarray(held_offset, dtype=np.float64).copy()
        self._update_gripper_filter()
        self.tick = tick

    # ------------------------------------------------------------------------------------------------ control
    def step(self, action: np.ndarray) -> None:
        """One control tick: apply the grip command, then move toward the target (clipped to the workspace)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(
                f"an action is [target_x, target_y, grip, done], shape ({ACTION_DIM},); got shape {action.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or Inf: {action.tolist()}; refusing to move the gripper")
        self._set_grip(bool(action[2] > 0.5))
        self._move_toward(np.clip(action[:2], 0.0, 1.0))

    def hold(self) -> None:
        """One tick with the gripper staying where it is and the grip unchanged (what a stale command gets)."""
        self._move_toward(self.gripper_position())

    def _set_grip(self, closed: bool) -> None:
        if closed and not self._grip_closed:
            self._grasp_nearest()
        elif not closed and self._held is not None:
            self._release()
        self._grip_closed = closed
        self._update_gripper_filter()

    def _grasp_nearest(self) -> None:
        here = self.gripper_position()
        distances = {c: float(np.linalg.norm(self.block_position(c) - here)) for c in COLOURS}
        colour = min(distances, key=distances.__getitem__)
        if distances[colour] > GRASP_RADIUS:
            return  # closing on nothing grasps nothing
        block = self._blocks[colour]
        self._space.remove(block.body, block.shape, *block.friction)
        self._held = colour
        self._held_offset = self.block_position(colour) - here

    def _release(self) -> None:
        assert self._held is not None
        block = self._blocks[self._held]
        block.body.velocity = (0.0, 0.0)
        block.body.angular_velocity = 0.0
        # Back on the table where it is; if it lands on another block, the solver pushes them apart.
        self._space.add(block.body, block.shape, *block.friction)
        self._space.reindex_shapes_for_body(block.body)
        self._held = None
        self._held_offset = np.zeros(2)

    def _update_gripper_filter(self) -> None:
        # An open gripper hovers above the blocks; a closed, empty one is lowered and pushes them; a carrying
        # one is lifted with its block, clear of the others.
        pushes = self._grip_closed and self._held is None
        self._gripper_shape.filter = _GRIPPER_PUSHES if pushes else _NO_COLLISIONS

    def _move_toward(self, target: np.ndarray) -> None:
        start = self.gripper_position()
        delta = target - start
        distance = float(np.linalg.norm(delta))
        if distance > MAX_STEP:
            delta *= MAX_STEP / distance
        end = start + delta
        dt = _TICK_S / SUBSTEPS
        self._gripper.velocity = (float(delta[0]) / _TICK_S, float(delta[1]) / _TICK_S)
        for _ in range(SUBSTEPS):
            self._space.step(dt)
        # Land exactly on the commanded point so repeated ticks do not accumulate integration error.
        self._gripper.velocity = (0.0, 0.0)
        self._gripper.position = (float(end[0]), float(end[1]))
        if self._held is not None:
            held = self._blocks[self._held].body
            held.position = (float(end[0] + self._held_offset[0]), float(end[1] + self._held_offset[1]))
        self._space.reindex_shapes_for_body(self._gripper)
        self.tick += 1

    # ---------------------------------------------------------------------------------------------- observing
    def gripper_position(self) -> np.ndarray:
        return np.array(self._gripper.position, dtype=np.float64)

    def grip_closed(self) -> bool:
        return self._grip_closed

    def state(self) -> np.ndarray:
        """``observation.state``: ``[gripper_x, gripper_y, grip]`` float32 (grip is 1.0 when closed)."""
        x, y = self._gripper.position
        return np.array([x, y, 1.0 if self._grip_closed else 0.0], dtype=np.float32)

    def block_position(self, colour: str) -> np.ndarray:
        if colour not in self._blocks:
            raise ValueError(f"unknown block colour {colour!r}; expected one of {', '.join(COLOURS)}")
        return np.array(self._blocks[colour].body.position, dtype=np.float64)

    def block_angle(self, colour: str) -> float:
        return float(self._blocks[colour].body.angle)

    def held_block(self) -> str | None:
        return self._held

    def block_bins(self) -> dict[str, str | None]:
        """Which bin each block's centre is in (None: in no bin). A held block is in no bin."""
        return {c: None if c == self._held else bin_of(self.block_position(c)) for c in COLOURS}

    def render(self) -> np.ndarray:
        """A 96×96 RGB uint8 top-down image: table, bins, blocks, and the gripper (ring: open, disc: closed)."""
        image = self._background.copy()
        for colour in COLOURS:
            if colour != self._held:
                self._draw_block(image, colour)
        if self._held is not None:
            self._draw_block(image, self._held)  # lifted: drawn above the blocks on the table
        centre = _to_fixed_point(self.gripper_position())
        radius = int(0.03 * IMAGE_SIZE * _SUBPIXEL)
        if self._grip_closed:
            cv2.circle(image, centre, radius, _GRIPPER_RGB, -1, cv2.LINE_8, _SUBPIXEL_BITS)
        else:
            cv2.circle(image, centre, radius, _GRIPPER_RGB, 1, cv2.LINE_8, _SUBPIXEL_BITS)
        return image

    def _draw_block(self, image: np.ndarray, colour: str) -> None:
        body = self._blocks[colour].body
        x, y = body.position
        x, y = x - _HALF_PIXEL, y - _HALF_PIXEL
        scale = IMAGE_SIZE * _SUBPIXEL
        # Half-diagonals of the rotated square; plain floats because numpy's per-call overhead dominates here.
        c = math.cos(body.angle) * BLOCK_SIZE / 2
        s = math.sin(body.angle) * BLOCK_SIZE / 2
        corners = np.array(
            [
                (round((x + c - s) * scale), round((y + s + c) * scale)),
                (round((x - c - s) * scale), round((y - s + c) * scale)),
                (round((x - c + s) * scale), round((y - s - c) * scale)),
                (round((x + c + s) * scale), round((y + s - c) * scale)),
            ],
            dtype=np.int32,
        )
        cv2.fillConvexPoly(image, corners, BLOCK_RGB[colour], cv2.LINE_8, _SUBPIXEL_BITS)

    # -------------------------------------------------------------------------------------------- checkpoints
    def snapshot(self) -> dict[str, Any]:
        """The whole world state as plain JSON-able values (for checkpoints and look-ahead copies)."""
        return {
            "version": SNAPSHOT_VERSION,
            "seed": int(self.seed),
            "tick": int(self.tick),
            "gripper": self.gripper_position().tolist(),
            "grip_closed": bool(self._grip_closed),
            "held": self._held,
            "held_offset": [float(v) for v in self._held_offset],
            "blocks": {
                c: {
                    "position": list(b.body.position),
                    "angle": float(b.body.angle),
                    "velocity": list(b.body.velocity),
                    "angular_velocity": float(b.body.angular_velocity),
                }
                for c, b in self._blocks.items()
            },
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put the world back into a state taken by ``snapshot()`` (the physics' contact cache starts empty)."""
        version = snapshot.get("version") if isinstance(snapshot, dict) else None
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"world snapshot version {version!r} is not supported (expected {SNAPSHOT_VERSION})")
        try:
            blocks = {
                c: (
                    np.asarray(snapshot["blocks"][c]["position"], dtype=np.float64).reshape(2),
                    float(snapshot["blocks"][c]["angle"]),
                    np.asarray(snapshot["blocks"][c]["velocity"], dtype=np.float64).reshape(2),
                    float(snapshot["blocks"][c]["angular_velocity"]),
                )
                for c in COLOURS
            }
            gripper = np.asarray(snapshot["gripper"], dtype=np.float64).reshape(2)
            held_offset = np.asarray(snapshot["held_offset"], dtype=np.float64).reshape(2)
            held, grip_closed = snapshot["held"], bool(snapshot["grip_closed"])
            tick, seed = int(snapshot["tick"]), int(snapshot["seed"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"world snapshot is malformed ({type(error).__name__}: {error})") from error
        if held is not None and held not in COLOURS:
            raise ValueError(f"world snapshot holds unknown block {held!r}")
        values = [gripper, held_offset, *(b[0] for b in blocks.values())]
        if not all(np.all(np.isfinite(v)) for v in values):
            raise ValueError("world snapshot contains NaN or Inf positions")
        self._build(
            gripper=gripper,
            grip_closed=grip_closed,
            blocks=blocks,
            held=held,
            held_offset=held_offset,
            tick=tick,
        )
        self.seed = seed


def _to_fixed_point(point: np.ndarray) -> tuple[int, int]:
    scale = IMAGE_SIZE * _SUBPIXEL
    return (round((float(point[0]) - _HALF_PIXEL) * scale), round((float(point[1]) - _HALF_PIXEL) * scale))


def _draw_background() -> np.ndarray:
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = _TABLE_RGB
    for rect in BIN_RECTS.values():
        top_left = (round(rect.x0 * IMAGE_SIZE), round(rect.y0 * IMAGE_SIZE))
        bottom_right = (round(rect.x1 * IMAGE_SIZE) - 1, round(rect.y1 * IMAGE_SIZE) - 1)
        cv2.rectangle(image, top_left, bottom_right, _BIN_FILL_RGB, -1)
        cv2.rectangle(image, top_left, bottom_right, _BIN_EDGE_RGB, 1)
    return image


def _show(out: Path, seed: int, frames: int) -> None:
    """Write a strip of frames of the scripted expert doing the first step of a chain (scaled up ×4)."""
    from hil.expert import ScriptedExpert
    from hil.tasks import make_chain

    world = TabletopWorld(seed)
    rng = np.random.default_rng(seed)
    step = make_chain(rng, world, n_steps=1)[0]
    expert = ScriptedExpert(rng)
    expert.reset(step)
    images = []
    every = 4
    for tick in range(frames * every):
        if tick % every == 0:
            images.append(world.render())
        world.step(expert.act(world))
    strip = np.concatenate(images, axis=1)
    big = cv2.resize(strip, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(out), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out.with_name(out.stem + "-96px" + out.suffix)), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    print(f"{step.instruction!r}: wrote {out} ({len(images)} frames, every {every} ticks, ×4)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.world", description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="write a PNG strip of frames for eyeballing")
    parser.add_argument("--out", type=Path, default=Path("world-frames.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    if not args.show:
        parser.print_help()
        return 0
    _show(args.out, args.seed, args.frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
