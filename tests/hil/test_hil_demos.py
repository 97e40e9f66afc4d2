"""Expert demonstrations: array layout, consistency with the world, .npz round trip, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from hil.demos import DemoSet, generate_demos, load_demos, main
from hil.tasks import parse_instruction
from hil.world import BLOCK_RGB


@pytest.fixture(scope="module")
def demos() -> DemoSet:
    return generate_demos(3, seed=5)


def test_arrays_have_the_contracted_shapes_and_types(demos):
    n = len(demos)
    assert n > 3 * 10 * 10
    assert demos.images.shape == (n, 96, 96, 3) and demos.images.dtype == np.uint8
    assert demos.states.shape == (n, 3) and demos.states.dtype == np.float32
    assert demos.actions.shape == (n, 4) and demos.actions.dtype == np.float32
    for name in ("instruction_index", "episode_index", "step_index", "frame_index"):
        assert getattr(demos, name).shape == (n,) and getattr(demos, name).dtype == np.int64
    assert demos.steps_attempted == 30 and demos.steps_dropped == 0
    assert set(demos.episode_index.tolist()) == {0, 1, 2}


def test_each_step_is_a_contiguous_run_of_frames_ending_in_done(demos):
    keys = np.stack([demos.episode_index, demos.step_index], axis=1)
    starts = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    bounds = [0, *starts.tolist(), len(demos)]
    assert len(bounds) - 1 == 30
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        np.testing.assert_array_equal(demos.frame_index[begin:end], np.arange(end - begin))
        assert len(set(demos.instruction_index[begin:end].tolist())) == 1
        done = demos.actions[begin:end, 3]
        np.testing.assert_array_equal(done[-3:], 1.0)
        assert np.all(done[:-3] == 0.0)
        # The next frame's gripper is where the previous action sent it.
        np.testing.assert_allclose(demos.states[begin + 1 : end, :2], demos.actions[begin : end - 1, :2], atol=1e-6)
        instruction = demos.instruction_of(begin)
        colour = parse_instruction(instruction).colour
        # The named block is in the first image of its step.
        assert np.any(np.all(demos.images[begin] == BLOCK_RGB[colour], axis=2))


def test_generation_is_reproducible(demos):
    again = generate_demos(1, seed=5)
    n = len(again)
    np.testing.assert_array_equal(again.actions, demos.actions[:n])
    np.testing.assert_array_equal(again.images, demos.images[:n])


def test_save_load_round_trip(demos, tmp_path):
    path = tmp_path / "sub" / "demos.npz"
    demos.save(path)
    loaded = load_demos(path)
    for name in ("images", "states", "actions", "instruction_index", "episode_index", "step_index", "frame_index"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(demos, name), err_msg=name)
    assert loaded.instructions == demos.instructions
    assert (loaded.seed, loaded.steps_attempted, loaded.steps_dropped) == (5, 30, 0)
    with np.load(path, allow_pickle=False) as raw:  # nothing in the file needs pickle
        assert raw["instructions"].dtype.kind == "U"


def test_loading_something_else_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="hil.demos"):
        load_demos(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a demo file"):
        load_demos(junk)
    other = tmp_path / "other.npz"
    np.savez(other, images=np.zeros(3))
    with pytest.raises(ValueError, match="version"):
        load_demos(other)


def test_cli_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "cli.npz"
    assert main(["--chains", "1", "--steps", "2", "--out", str(out), "--seed", "1"]) == 0
    loaded = load_demos(out)
    assert loaded.steps_attempted == 2 and len(loaded) > 10
    assert main(["--chains", "0", "--out", str(out)]) == 2
