"""The scale model's instruction-prefix cache: cached keys/values give exactly what recomputing the prefix gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.scale.build import SIZES, build
from models.scale.prefix import empty_past, instruction_cache, no_tokens

CFG = SIZES["small"]


@pytest.fixture(scope="module")
def prefill(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    directory: Path = tmp_path_factory.mktemp("scale-prefix")
    build(CFG, directory, "int4")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(directory / "prefill.onnx"), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def _inputs(seed: int, words: int, patches: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(1, CFG.vocab, size=(1, words), dtype=np.int64),
            rng.standard_normal((1, patches, CFG.patch_dim), dtype=np.float32))


def test_cached_instruction_prefill_equals_the_whole_prefix(prefill):
    tokens, image = _inputs(0, words=12, patches=20)
    whole = _run(prefill, {"tokens": tokens, "patches": image, **empty_past(CFG.layers, CFG.head_dim)})
    cached = _run(prefill, {"tokens": no_tokens(), "patches": image, **instruction_cache(whole, CFG.layers, 12)})
    for layer in range(CFG.layers):
        assert whole[f"keys_{layer}"].shape == (1, 1, CFG.head_dim, 32)
        np.testing.assert_allclose(cached[f"keys_{layer}"], whole[f"keys_{layer}"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(cached[f"values_{layer}"], whole[f"values_{layer}"], rtol=1e-4, atol=1e-4)
    assert cached["prefix_hidden"].shape == (1, 20, CFG.width)  # only the new (image) tokens were computed
    np.testing.assert_allclose(cached["prefix_hidden"], whole["prefix_hidden"][:, 12:], rtol=1e-4, atol=1e-4)


def test_instruction_keys_do_not_depend_on_the_image_but_image_keys_see_the_instruction(prefill):
    tokens, image = _inputs(1, words=8, patches=16)
    other_tokens, other_image = _inputs(2, words=8, patches=16)
    past = empty_past(CFG.layers, CFG.head_dim)
    base = _run(prefill, {"tokens": tokens, "patches": image, **past})
    new_image = _run(prefill, {"tokens": tokens, "patches": other_image, **past})
    new_text = _run(prefill, {"tokens": other_tokens, "patches": image, **past})
    last = f"keys_{CFG.layers - 1}"
    np.testing.assert_array_equal(new_image[last][..., :8], base[last][..., :8])  # block-causal: no image leak
    assert np.abs(new_image[last][..., 8:] - base[last][..., 8:]).max() > 0.1
    assert np.abs(new_text[last][..., 8:] - base[last][..., 8:]).max() > 0.1  # image tokens attend to the text


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_prefix_reuse_part_times_both_modes_and_states_the_token_split(tmp_path: Path):
    import json
    import subprocess
    import sys

    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.prefix_reuse", "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=1100,  # many minutes under load (scripts/stress-test.sh)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "prefix_reuse.json").read_text())
    splits = result["scale"]["splits"]
    assert {(s["instruction_tokens"], s["image_tokens"]) for s in splits.values()} == {(48, 64), (48, 256)}
    for split in splits.values():
        # both were timed; which is faster is the benchmark's question (under stress-ng the fastest prefill of a
        # quick run took 70 ms and the fastest whole chunk 16 ms: a loaded machine reorders anything timed)
        assert split["cached_prefill"]["min_ms"] > 0 and split["cached_chunk"]["min_ms"] > 0
        # The recomputed prefix does more work (48 more tokens), but which timing comes out faster is the benchmark's
        # question: a starved run reorders even that (a concurrent whole-suite run at ~0.14 cores failed a 0.8 bound).
        assert split["prefill_speedup"] > 0
        assert split["prefill_speedup_bound_from_tokens"] == round((48 + split["image_tokens"]) / split["image_tokens"], 3)
        interval = split["chunk_speedup_interval"]
        assert interval["n"] == result["scale"]["rounds"] >= 6
        assert interval["low"] <= interval["median"] == split["chunk_speedup"] <= interval["high"]
        assert split["verdict"] in {"MET", "MISSED", "NOT SHOWN", "NOISY"}
        key = f"scale model, 48 instruction | {split['image_tokens']} image tokens: cached chunk >= 2.0x faster"
        assert result["targets_met"][key] == (split["verdict"] == "MET")
    assert (out / "prefix_reuse.png").stat().st_size > 1000
