"""The reference world: seeded layouts, rendering, real physics (push, carry, release), snapshots, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from hil.world import (
    ACTION_DIM,
    BIN_RECTS,
    BLOCK_RGB,
    BLOCK_SIZE,
    COLOURS,
    IMAGE_SIZE,
    MAX_STEP,
    STATE_DIM,
    TabletopWorld,
    bin_of,
    main,
)

# Far apart and in no bin: the middle of the table and the bin-less corners.
NEUTRAL = {"red": (0.4, 0.4), "green": (0.6, 0.6), "blue": (0.1, 0.1), "yellow": (0.9, 0.9)}


def arranged(blocks: dict[str, tuple[float, float]], gripper=(0.5, 0.5), grip_closed=False) -> TabletopWorld:
    world = TabletopWorld(0)
    world.arrange({**NEUTRAL, **blocks}, gripper=gripper, grip_closed=grip_closed)
    return world


def go(world: TabletopWorld, x: float, y: float, grip: float, ticks: int = 1) -> None:
    for _ in range(ticks):
        world.step(np.array([x, y, grip, 0.0], dtype=np.float32))


def layout(world: TabletopWorld) -> np.ndarray:
    return np.array([world.block_position(c) for c in COLOURS])


def test_layouts_are_seeded_reproducible_and_never_overlap():
    a, b = TabletopWorld(7), TabletopWorld(7)
    np.testing.assert_array_equal(layout(a), layout(b))
    np.testing.assert_array_equal(a.render(), b.render())
    np.testing.assert_array_equal(a.state(), b.state())
    a.reset(8)
    assert not np.allclose(layout(a), layout(b))
    a.reset(7)
    np.testing.assert_array_equal(layout(a), layout(b))

    in_bins = 0
    for seed in range(200):
        world = TabletopWorld(seed)
        centres = layout(world)
        assert np.all((centres > 0.0) & (centres < 1.0))
        for p, q in itertools.combinations(centres, 2):
            assert np.linalg.norm(p - q) > BLOCK_SIZE * np.sqrt(2)  # not touching, whatever the angles
        in_bins += sum(b is not None for b in world.block_bins().values())
        assert world.held_block() is None and world.state()[2] == 0.0
    # Layouts mix blocks in bins and outside (about half the table is bins).
    assert 0.25 < in_bins / (200 * len(COLOURS)) < 0.75


def test_render_shape_dtype_colours_and_grip_state_are_visible():
    world = arranged({})
    image = world.render()
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    for colour, rgb in BLOCK_RGB.items():
        x, y = world.block_position(colour)
        assert tuple(image[int(y * IMAGE_SIZE), int(x * IMAGE_SIZE)]) == rgb, colour
        assert np.sum(np.all(image == rgb, axis=2)) >= 0.8 * (BLOCK_SIZE * IMAGE_SIZE) ** 2, colour
    # A bin's inside is drawn differently from the table outside the bins.
    left = BIN_RECTS["left"]
    inside = image[int((left.y0 + left.y1) / 2 * IMAGE_SIZE), int(left.x1 / 2 * IMAGE_SIZE)]
    assert tuple(inside) != tuple(image[int(0.5 * IMAGE_SIZE), int(0.5 * IMAGE_SIZE) + 10])

    centre = (int(0.5 * IMAGE_SIZE), int(0.5 * IMAGE_SIZE))
    open_image = world.render()
    go(world, 0.5, 0.5, grip=1.0)  # closing on nothing
    closed_image = world.render()
    assert np.any(open_image != closed_image)
    # Ring when open (the centre shows the table), filled disc when closed.
    assert open_image[centre].sum() > 3 * 120 and closed_image[centre].sum() < 3 * 60


def test_state_is_gripper_position_and_grip():
    world = arranged({}, gripper=(0.3, 0.7))
    state = world.state()
    assert state.shape == (STATE_DIM,) and state.dtype == np.float32
    np.testing.assert_allclose(state, [0.3, 0.7, 0.0], atol=1e-6)
    go(world, 0.3, 0.7, grip=0.9)
    assert world.state()[2] == 1.0


def test_gripper_moves_at_most_max_step_per_tick_and_stays_in_the_workspace():
    world = arranged({}, gripper=(0.5, 0.5))
    go(world, 1.5, 0.5, grip=0.0)
    np.testing.assert_allclose(world.gripper_position(), [0.5 + MAX_STEP, 0.5], atol=1e-9)
    go(world, 1.5, 0.5, grip=0.0, ticks=20)
    np.testing.assert_allclose(world.gripper_position(), [1.0, 0.5], atol=1e-9)
    go(world, 0.97, 0.52, grip=0.0)
    np.testing.assert_allclose(world.gripper_position(), [0.97, 0.52], atol=1e-6)


def test_open_gripper_hovers_over_blocks():
    world = arranged({"red": (0.5, 0.5)}, gripper=(0.3, 0.5))
    go(world, 0.7, 0.5, grip=0.0, ticks=8)
    np.testing.assert_allclose(world.block_position("red"), [0.5, 0.5], atol=1e-9)


def test_closed_empty_gripper_pushes_a_block_and_friction_stops_it():
    world = arranged({"red": (0.5, 0.5)}, gripper=(0.3, 0.5), grip_closed=True)
    go(world, 0.7, 0.5, grip=1.0, ticks=5)
    pushed = world.block_position("red")
    assert pushed[0] > 0.55, pushed  # pushed along +x by the gripper
    assert world.held_block() is None
    go(world, 0.7, 0.2, grip=0.0, ticks=6)  # open and leave: the block slides, then stops on the table
    rest = world.block_position("red")
    go(world, 0.7, 0.2, grip=0.0, ticks=5)
    np.testing.assert_allclose(world.block_position("red"), rest, atol=1e-6)


def test_grasp_carry_and_release():
    world = arranged({"red": (0.5, 0.5), "green": (0.7, 0.5)}, gripper=(0.5, 0.5))
    go(world, 0.5, 0.5, grip=1.0)
    assert world.held_block() == "red"
    # Carried over the green block: lifted, so green does not move; red follows the gripper rigidly.
    for x in (0.58, 0.66, 0.74, 0.82):
        go(world, x, 0.5, grip=1.0)
        np.testing.assert_allclose(world.block_position("red"), world.gripper_position(), atol=1e-9)
    np.testing.assert_allclose(world.block_position("green"), [0.7, 0.5], atol=1e-9)
    go(world, 0.82, 0.5, grip=0.0)
    assert world.held_block() is None
    go(world, 0.5, 0.3, grip=0.0, ticks=5)  # the gripper leaves; the block stays where it was put down
    np.testing.assert_allclose(world.block_position("red"), [0.82, 0.5], atol=1e-6)


def test_a_block_dropped_onto_another_is_separated_by_physics():
    world = arranged({"red": (0.5, 0.5), "green": (0.55, 0.5)}, gripper=(0.5, 0.5))
    go(world, 0.5, 0.5, grip=1.0)
    go(world, 0.52, 0.5, grip=1.0)  # red now hovers over most of green
    overlap = BLOCK_SIZE - np.abs(world.block_position("red") - world.block_position("green")).max()
    go(world, 0.52, 0.5, grip=0.0)
    go(world, 0.52, 0.2, grip=0.0, ticks=3)
    gap = np.abs(world.block_position("red") - world.block_position("green"))
    assert overlap > 0.02 and gap.max() >= BLOCK_SIZE - 0.001, (overlap, gap)


def test_closing_on_nothing_grasps_nothing():
    world = arranged({"red": (0.5, 0.5)}, gripper=(0.5 + BLOCK_SIZE, 0.5))
    go(world, 0.5 + BLOCK_SIZE, 0.5, grip=1.0)
    assert world.held_block() is None
    go(world, 0.9, 0.5, grip=1.0, ticks=4)
    assert world.held_block() is None


def test_hold_keeps_position_and_grip():
    world = arranged({"red": (0.5, 0.5)}, gripper=(0.5, 0.5))
    go(world, 0.5, 0.5, grip=1.0)
    before, tick = world.state(), world.tick
    world.hold()
    np.testing.assert_array_equal(world.state(), before)
    assert world.held_block() == "red" and world.tick == tick + 1


@pytest.mark.parametrize(
    "action",
    [
        [np.nan, 0.5, 0, 0],
        [0.5, np.inf, 0, 0],
        [0.5, 0.5, np.nan, 0],
        [0.5, 0.5, 0, -np.inf],
        [0.5, 0.5, 0],
        [[0.5] * 4],
    ],
)
def test_bad_actions_are_refused_and_change_nothing(action):
    world = TabletopWorld(3)
    before = json.dumps(world.snapshot())
    with pytest.raises(ValueError, match="action"):
        world.step(np.array(action, dtype=np.float64))
    assert json.dumps(world.snapshot()) == before


def test_snapshot_is_json_and_restores_the_same_world():
    world = TabletopWorld(11)
    go(world, *world.block_position("blue"), grip=0.0, ticks=12)
    go(world, *world.gripper_position(), grip=1.0)
    go(world, 0.5, 0.5, grip=1.0, ticks=2)
    snapshot = json.loads(json.dumps(world.snapshot()))
    copy = TabletopWorld(0)
    copy.restore(snapshot)
    np.testing.assert_array_equal(copy.render(), world.render())
    np.testing.assert_array_equal(copy.state(), world.state())
    assert copy.held_block() == world.held_block() and copy.tick == world.tick
    for w in (world, copy):
        go(w, 0.2, 0.2, grip=1.0, ticks=4)
        go(w, 0.2, 0.2, grip=0.0)
    np.testing.assert_allclose(layout(copy), layout(world), atol=1e-9)

    with pytest.raises(ValueError, match="version"):
        copy.restore({**snapshot, "version": 99})


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("gripper"),
        lambda s: s["blocks"].pop("red"),
        lambda s: s["blocks"]["blue"].update(position=[0.1]),
        lambda s: s["blocks"]["blue"].update(position=[float("nan"), 0.5]),
        lambda s: s.update(held="purple"),
        lambda s: s.update(tick="soon"),
    ],
)
def test_a_malformed_snapshot_is_refused_and_changes_nothing(damage):
    world = TabletopWorld(4)
    snapshot = world.snapshot()
    damage(snapshot)
    before = json.dumps(world.snapshot())
    with pytest.raises(ValueError, match="snapshot"):
        world.restore(snapshot)
    assert json.dumps(world.snapshot()) == before


def test_bin_of_regions_are_disjoint_and_corners_belong_to_no_bin():
    assert bin_of((0.1, 0.5)) == "left" and bin_of((0.9, 0.5)) == "right"
    assert bin_of((0.5, 0.1)) == "top" and bin_of((0.5, 0.9)) == "bottom"
    assert bin_of((0.1, 0.1)) is None and bin_of((0.5, 0.5)) is None
    grid = np.linspace(0.005, 0.995, 60)
    for x, y in itertools.product(grid, grid):
        assert sum(r.contains((x, y)) for r in BIN_RECTS.values()) <= 1


def test_show_writes_a_png(tmp_path):
    out = tmp_path / "frames.png"
    assert main(["--show", "--out", str(out), "--frames", "3"]) == 0
    assert out.stat().st_size > 0


def test_action_dim_matches_contract():
    assert ACTION_DIM == 4 and STATE_DIM == 3 and COLOURS == ("red", "green", "blue", "yellow")


def test_no_seed_draws_a_fresh_layout_that_its_seed_reproduces():
    world = TabletopWorld()
    np.testing.assert_array_equal(layout(TabletopWorld(world.seed)), layout(world))


@pytest.mark.parametrize("blocks", [{"red": (1.2, 0.5)}, {"red": (float("nan"), 0.5)}, {"purple": (0.5, 0.5)}])
def test_arrange_refuses_impossible_scenes(blocks):
    with pytest.raises(ValueError):
        TabletopWorld(0).arrange(blocks)
