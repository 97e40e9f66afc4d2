"""Whatever a policy commands, the world stays a world: blocks on the table, finite, apart, state in range."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.world import BLOCK_SIZE, COLOURS, TabletopWorld

coordinate = st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)
action = st.tuples(coordinate, coordinate, st.sampled_from([0.0, 1.0]), st.just(0.0))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), actions=st.lists(action, min_size=1, max_size=60))
def test_random_commands_keep_blocks_on_the_table_and_apart(seed, actions):
    world = TabletopWorld(seed)
    for a in actions:
        world.step(np.array(a, dtype=np.float32))
        state = world.state()
        assert np.all(np.isfinite(state)) and np.all((state >= 0.0) & (state <= 1.0))
    for _ in range(10):  # open and let everything settle
        world.step(np.array([*world.gripper_position(), 0.0, 0.0], dtype=np.float32))
    centres = {c: world.block_position(c) for c in COLOURS}
    for colour, centre in centres.items():
        assert np.all(np.isfinite(centre)) and np.all((centre > 0.0) & (centre < 1.0)), (colour, centre)
    for (a, p), (b, q) in itertools.combinations(centres.items(), 2):
        # Squares of side s overlap by at most the solver's slop once settled: centres stay ~s apart or more.
        assert np.linalg.norm(p - q) > BLOCK_SIZE * 0.9, (a, b, p, q)
