"""Bad values never reach the motors: Hypothesis properties of the controller's filter, then over real sockets."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_edge.controller import ActionLimits, ControllerClient, check_action
from vla_edge.stream import ActionStream

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def limits_and_last(draw):
    dim = draw(st.integers(1, 8))
    low = draw(st.lists(st.floats(-100, 100), min_size=dim, max_size=dim))
    span = draw(st.lists(st.floats(0, 100), min_size=dim, max_size=dim))
    delta = draw(st.lists(st.floats(1e-6, 50), min_size=dim, max_size=dim))
    limits = ActionLimits(low=low, high=[a + b for a, b in zip(low, span)], max_delta=delta)
    fractions = draw(st.lists(st.floats(0, 1), min_size=dim, max_size=dim))
    last = np.clip(np.array(low) + np.array(fractions) * np.array(span), limits.low, limits.high)
    return limits, last


@st.composite
def candidate(draw):
    limits, last = draw(limits_and_last())
    # mostly near the last position (so valid ones occur), sometimes anything at all
    near = st.floats(-2.0, 2.0).map(float)
    offsets = draw(st.lists(st.one_of(near, ANY_FLOAT), min_size=limits.dim, max_size=limits.dim))
    values = last + np.array([o * d for o, d in zip(offsets, limits.max_delta)]) if all(
        math.isfinite(o) for o in offsets) else np.array([last[i] + o for i, o in enumerate(offsets)])
    return limits, last, values


@settings(max_examples=400, deadline=None)
@given(candidate())
def test_filter_accepts_exactly_the_safe_values(case):
    limits, last, values = case
    verdict = check_action(values, last, limits)
    safe = (
        bool(np.all(np.isfinite(values)))
        and bool(np.all(values >= limits.low)) and bool(np.all(values <= limits.high))
        and bool(np.all(np.abs(values - last) <= limits.max_delta))
    )
    assert (verdict is None) == safe, (verdict, values, last, limits)
    if not np.all(np.isfinite(values)):
        assert verdict == "non_finite"


@settings(max_examples=100, deadline=None)
@given(limits_and_last(), st.integers(0, 9))
def test_filter_rejects_wrong_length(case, dim):
    limits, last = case
    if dim != limits.dim:
        assert check_action(np.zeros(dim), last, limits) == "wrong_dim"


def test_bad_limits_are_refused():
    for bad in (dict(low=[0, 1], high=[1], max_delta=[1]), dict(low=[2.0], high=[1.0], max_delta=[1.0]),
                dict(low=[0.0], high=[1.0], max_delta=[0.0]), dict(low=[float("nan")], high=[1.0], max_delta=[1.0])):
        with pytest.raises(ValueError):
            ActionLimits(**bad)


@pytest.mark.slow
def test_bad_values_over_real_sockets_never_actuate(demo_settings, limits, start_position, wait):
    """A daemon sending NaN/Inf/out-of-limit/over-velocity commands: none moves the arm, each is counted."""
    rng = np.random.default_rng(3)
    kinds = ["ok", "nan", "inf", "out_of_limits", "over_velocity"]
    expected = {"non_finite": 0, "out_of_limits": 0, "over_velocity": 0}
    actuated = []
    with ActionStream(demo_settings, action_dim=4) as daemon, ControllerClient(
        demo_settings, limits, start_position
    ) as client:
        assert daemon.wait_for_controller(5.0) and wait(client.ready, 2.0)
        for i in range(120):
            kind = kinds[rng.integers(len(kinds))]
            values = client.position + np.array([0.05, -0.05, 0.0, 0.0]) * (1 if i % 2 else -1)
            if kind == "nan":
                values[rng.integers(4)] = np.nan
            elif kind == "inf":
                values[rng.integers(4)] = -np.inf if i % 2 else np.inf
            elif kind == "out_of_limits":
                values[rng.integers(2, 4)] = 1.5
            elif kind == "over_velocity":
                values[0] = client.position[0] + (0.3 if client.position[0] < 0.5 else -0.3)
            daemon.send_action(values, time.monotonic_ns())
            reason = {"nan": "non_finite", "inf": "non_finite"}.get(kind, kind)
            setpoint = client.next_setpoint()
            deadline = time.monotonic() + 30.0  # generous: a loaded machine delivers late, never wrongly
            while setpoint.holding and setpoint.reason not in expected and time.monotonic() < deadline:
                time.sleep(0.002)  # not delivered yet: the controller is idle/holding
                setpoint = client.next_setpoint()
            if kind == "ok":
                assert not setpoint.holding, setpoint.reason
                actuated.append(setpoint.values)
            else:
                assert setpoint.holding and setpoint.reason == reason, (kind, setpoint)
            if kind != "ok":
                expected[reason] += 1
        counters = client.counters()
    for values in actuated:
        assert np.all(np.isfinite(values)) and np.all(values >= limits.low) and np.all(values <= limits.high)
    print(f"\nbad values: sent {sum(expected.values())} bad commands {expected}, actuated 0 of them; "
          f"{len(actuated)} good ones actuated; controller counters "
          f"{ {k: v for k, v in counters.items() if k.startswith('rejected_')} }")
    for reason, count in expected.items():
        assert counters.get(f"rejected_{reason}", 0) == count
