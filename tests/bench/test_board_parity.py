"""bench.board_parity: the comparison deploy/raspberry-pi/check-aarch64.sh relies on finds a wrong number, and the
committed observations run the real policy reproducibly. Also run under the aarch64 emulator by that check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.board_parity import (
    BOUNDS,
    RECORDED,
    ParityError,
    compare,
    load_observations,
    main,
    run,
    write_results,
)
from vla_edge.paths import REPO_ROOT

OBSERVATIONS = REPO_ROOT / "deploy" / "raspberry-pi" / "parity-observations.npz"


def _actions(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p: rng.uniform(0, 1, (4, 8, 8, 4)) for p in ("fp32", "int8", "int4")}


def test_identical_actions_pass_and_one_value_past_its_bound_fails():
    reference = _actions()
    assert all(d.passed and d.max_abs == 0 for d in compare(reference, {k: v.copy() for k, v in reference.items()}))
    candidate = {k: v.copy() for k, v in reference.items()}
    candidate["int8"][1, 2, 3, 0] += 2 * BOUNDS["int8"]  # one action value of 1024
    candidate["fp32"] += 0.5 * BOUNDS["fp32"]  # every value moved, all within the bound
    diffs = {d.precision: d for d in compare(reference, candidate)}
    assert diffs["fp32"].passed and diffs["fp32"].max_abs == pytest.approx(0.5 * BOUNDS["fp32"])
    assert not diffs["int8"].passed and diffs["int8"].over_bound == 1 and diffs["int8"].values == 1024
    assert diffs["int4"].passed


def test_nan_missing_variants_and_other_shapes_never_pass():
    reference = _actions()
    nan = {k: v.copy() for k, v in reference.items()}
    nan["int4"][0, 0, 0, 0] = np.nan
    assert not {d.precision: d for d in compare(reference, nan)}["int4"].passed
    with pytest.raises(ParityError, match="no 'int4' variant"):
        compare(reference, {k: v for k, v in reference.items() if k != "int4"})
    with pytest.raises(ParityError, match="shape"):
        compare(reference, {k: v[:2] for k, v in reference.items()})


def test_the_committed_observations_are_what_record_writes(tmp_path: Path):
    pytest.importorskip("pymunk")
    from bench.board_parity import record

    obs = load_observations(OBSERVATIONS)
    again = load_observations(record(tmp_path / "obs.npz"))
    assert obs.instructions == [text for _, text in RECORDED] == again.instructions
    np.testing.assert_array_equal(obs.images, again.images)
    np.testing.assert_array_equal(obs.states, again.states)
    np.testing.assert_array_equal(obs.noise, again.noise)
    assert obs.images.dtype == np.uint8 and obs.images.std() > 10  # rendered scenes, not blank frames


@pytest.mark.slow
def test_the_policy_on_the_recorded_observations_is_reproducible_and_the_cli_judges_it(tmp_path: Path, capsys):
    first = run(OBSERVATIONS, precisions=("int8",))
    second = run(OBSERVATIONS, precisions=("int8",))
    assert first["int8"].shape == (4, 8, 8, 4) and np.isfinite(first["int8"]).all()
    np.testing.assert_array_equal(first["int8"], second["int8"])  # same input, same noise, same numbers
    assert np.ptp(first["int8"]) > 0.1  # real actions, not a constant
    meta = {"machine": "test"}
    write_results(tmp_path / "a.json", first, meta)
    write_results(tmp_path / "b.json", second, meta)
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    shifted = {"int8": first["int8"] + 0.01}  # what a wrong kernel looks like, mildly
    write_results(tmp_path / "c.json", shifted, meta)
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps({"actions": {}}))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "bad.json")]) == 2
