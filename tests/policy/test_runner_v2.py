"""The schema-2 runner on small bundles built here: every sampler, role and source, with answers known in advance
(flow), from diffusers itself (DDPM/DDIM), or from the graph's definition (single pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.policy import tiny_bundles as tiny
from vla_edge.bundle import load_bundle
from vla_edge.errors import BundleError
from vla_edge.policy import PolicyInputError, PolicyRunner, SamplerNoise
from vla_edge.preprocess import denormalise, normalise, prepare_view

RNG = np.random.default_rng(7)


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---- flow matching -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[
    (1.0, "noise_minus_action", "broadcast"),  # SmolVLA / π0: time 1 → 0, v = ε − a, K/V shared without copies
    (0.0, "action_minus_noise", "repeat"),  # the reference: time 0 → 1, v = a − ε, context repeated to K
])
def flow_runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PolicyRunner:
    time_start, velocity, share = request.param
    directory = tiny.build_flow_bundle(tmp_path_factory.mktemp("flow") / "b", time_start, velocity, share)
    return PolicyRunner(load_bundle(directory), "fp32", intra_op_threads=1, seed=3)


def _expected_c(runner: PolicyRunner, frames: dict[str, np.ndarray], state: np.ndarray, text: str) -> float:
    """The prefix graph's scalar, recomputed from its definition on the runner's documented preprocessing."""
    m = runner.manifest
    views = {v.name: v for v in m.observation.cameras}
    top = prepare_view(frames["top"], views["top"])
    wrist = prepare_view(frames["wrist"], views["wrist"])
    s = normalise(state, m.observation.state.normalisation)
    tokens, mask = runner.tokenizer.encode(text)  # type: ignore[union-attr]
    return float(top.mean() + wrist.mean() + 0.1 * s.sum() + 0.01 * (tokens * mask).sum() + 0.5)


def test_flow_lands_on_the_target_whatever_the_noise(flow_runner: PolicyRunner) -> None:
    frames = {"top": _frame(12, 16, 1), "wrist": _frame(20, 20, 2)}  # other sizes than the bundle's: resized once
    state = np.array([0.3, -1.0], np.float32)
    text = "pick up the red cube"
    flow_runner.set_instruction(text)
    encoded = flow_runner.encode(frames, state)
    c = _expected_c(flow_runner, frames, state, text)
    assert float(encoded.embedding[0]) == pytest.approx(c, rel=1e-5)
    chunk = flow_runner.sample(encoded, 4)
    assert chunk.actions.shape == (4, tiny.FLOW_EXECUTE, tiny.FLOW_A)
    target = tiny.flow_target(c)[: tiny.FLOW_EXECUTE, : tiny.FLOW_A]
    expected = denormalise(target, flow_runner.manifest.action.normalisation)
    np.testing.assert_allclose(chunk.actions, np.broadcast_to(expected, chunk.actions.shape), atol=2e-4)
    # a different noise draw gives the same chunk (the straight path's exact velocity), a different state does not
    again = flow_runner.sample(encoded, 4, noise=RNG.standard_normal((4, tiny.FLOW_H, tiny.FLOW_A_PAD), np.float32))
    np.testing.assert_allclose(again.actions, chunk.actions, atol=2e-4)
    other = flow_runner.sample(flow_runner.encode(frames, state + 3.0), 1)
    assert np.abs(other.actions[0] - chunk.actions[0]).max() > 1e-2


def test_flow_inpaints_the_committed_prefix(flow_runner: PolicyRunner) -> None:
    frames = {"top": _frame(8, 8, 3), "wrist": _frame(6, 6, 4)}
    flow_runner.set_instruction("place it")
    encoded = flow_runner.encode(frames, np.zeros(2, np.float32))
    free = flow_runner.sample(encoded, 3).actions
    prefix = np.array([[1.0, -2.0, 0.5], [1.5, -1.0, 0.25]], np.float32)
    held = flow_runner.sample(encoded, 3, prefix=prefix).actions
    np.testing.assert_allclose(held[:, :2], np.broadcast_to(prefix, (3, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(held[:, 2:], free[:, 2:], atol=2e-4)  # the rest still lands on a*


def test_flow_noise_has_the_padded_shape(flow_runner: PolicyRunner) -> None:
    flow_runner.set_instruction("pick up")
    encoded = flow_runner.encode({"top": _frame(8, 8), "wrist": _frame(6, 6)}, np.zeros(2, np.float32))
    with pytest.raises(PolicyInputError, match=r"noise must have shape \(2, 6, 4\)"):
        flow_runner.sample(encoded, 2, noise=np.zeros((2, tiny.FLOW_EXECUTE, tiny.FLOW_A), np.float32))


def test_multi_view_bundle_needs_every_view(flow_runner: PolicyRunner) -> None:
    flow_runner.set_instruction("pick up")
    with pytest.raises(PolicyInputError, match=r"no frame for camera view\(s\) \['wrist'\]"):
        flow_runner.encode({"top": _frame(8, 8)}, np.zeros(2, np.float32))
    with pytest.raises(PolicyInputError, match="pass a mapping of view name to frame"):
        flow_runner.encode(_frame(8, 8), np.zeros(2, np.float32))


def test_hf_tokenizer_prompt_padding_and_mask(flow_runner: PolicyRunner) -> None:
    tokens, mask = flow_runner.tokenizer.encode("pick up the red cube")  # type: ignore[union-attr]
    words = ["pick", "up", "the", "red", "cube", "\n"]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "pick", "up", "the", "red", "cube", "place", "it", "\n"])}
    assert tokens.tolist() == [[vocab[w] for w in words] + [0, 0]]
    assert mask.tolist() == [[True] * 6 + [False] * 2]
    long, long_mask = flow_runner.tokenizer.encode("pick up the red cube and then place it")  # type: ignore[union-attr]
    assert long.shape == (1, 8) and bool(long_mask.all())  # truncated to max_length


def test_state_in_prompt_tokenizes_per_chunk(tmp_path: Path) -> None:
    directory = tiny.build_flow_bundle(tmp_path / "pi05", state_in_prompt=True)
    runner = PolicyRunner(load_bundle(directory), "fp32", intra_op_threads=1)
    runner.set_instruction("pick_up")
    frames = {"top": _frame(8, 8), "wrist": _frame(6, 6)}
    a = runner.encode(frames, np.array([0.1, 0.2], np.float32))
    b = runner.encode(frames, np.array([4.0, 0.2], np.float32))
    # "task : pick up , state : <4 bins> ;\naction" — the state's bins are in the prompt, so the tokens differ
    assert a.values["language.tokens"].tolist() != b.values["language.tokens"].tolist()
    state_norm = normalise(np.array([0.1, 0.2], np.float32), runner.manifest.observation.state.normalisation)
    bins = np.digitize(np.append(state_norm, [0.0, 0.0]), np.linspace(-1, 1, 257)[:-1]) - 1
    assert runner.tokenizer.prompt("pick_up", " ".join(map(str, bins))) == (  # type: ignore[union-attr]
        f"task : pick up , state : {' '.join(map(str, bins))} ;\naction")


def test_int8_variant_loads_the_same_dataflow(tmp_path: Path) -> None:
    directory = tiny.build_flow_bundle(tmp_path / "b")
    runner = PolicyRunner(load_bundle(directory), "int8", intra_op_threads=1)
    assert runner.precision == "int8" and runner.horizon == tiny.FLOW_EXECUTE


# ---- DDPM / DDIM against diffusers ----------------------------------------------------------------------------
DDPM = {"kind": "ddpm", "num_train_timesteps": 100, "num_inference_steps": 100, "beta_schedule": "squaredcos_cap_v2",
        "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True,
        "clip_sample_range": 1.0}


def _diffusers_loop(sampler: dict, cond: np.ndarray, initial: np.ndarray, seed: int) -> tuple[np.ndarray, list]:
    """Run diffusers' own scheduler on the numpy twin of the tiny UNet; return x0 and every step noise it drew."""
    torch = pytest.importorskip("torch")
    schedulers = pytest.importorskip("diffusers")
    cls = schedulers.DDPMScheduler if sampler["kind"] == "ddpm" else schedulers.DDIMScheduler
    kwargs = {k: v for k, v in sampler.items() if k not in ("kind", "num_inference_steps", "eta")}
    scheduler = cls(**kwargs)
    scheduler.set_timesteps(sampler["num_inference_steps"])
    generator = torch.Generator().manual_seed(seed)
    replay = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(initial.copy())
    drawn = []
    for t in scheduler.timesteps:
        out = tiny.ddpm_model(x.numpy(), np.full((x.shape[0],), int(t)), np.repeat(cond, x.shape[0], axis=0))
        extra = {"eta": sampler["eta"]} if "eta" in sampler else {}
        x = scheduler.step(torch.from_numpy(out), t, x, generator=generator, **extra).prev_sample
        draws = (sampler["kind"] == "ddpm" and int(t) > 0) or sampler.get("eta", 0) > 0
        if draws:
            drawn.append(torch.randn(x.shape, generator=replay).numpy())
    return x.numpy(), drawn


@pytest.mark.parametrize("sampler", [
    DDPM,
    {**DDPM, "num_inference_steps": 20},
    {**DDPM, "kind": "ddim", "num_inference_steps": 10},
    {**DDPM, "kind": "ddim", "num_inference_steps": 10, "eta": 0.5},
    {**DDPM, "beta_schedule": "linear", "prediction_type": "sample", "num_inference_steps": 25},
], ids=["ddpm-100", "ddpm-20", "ddim-10", "ddim-eta", "ddpm-linear-sample"])
def test_diffusion_matches_diffusers(sampler: dict, tmp_path: Path) -> None:
    runner = PolicyRunner(load_bundle(tiny.build_diffusion_bundle(tmp_path / "dp", sampler)), "fp32",
                          intra_op_threads=1)
    runner.set_instruction("task")
    frame, state = _frame(5, 7, 9), np.array([0.5, 3.0], np.float32)
    encoded = runner.encode(frame, state, t_obs_ns=10**9)
    cond = encoded.values["obs_encoder.cond"]
    k = 3
    initial = np.random.default_rng(5).standard_normal((k, tiny.DP_H, tiny.DP_A)).astype(np.float32)
    x0, drawn = _diffusers_loop(sampler, cond, initial, seed=11)
    steps = np.stack(drawn) if drawn else None
    chunk = runner.sample(encoded, k, noise=SamplerNoise(initial, steps))
    expected = np.clip(denormalise(x0[:, 1:7], runner.manifest.action.normalisation), -1.0, 3.0)
    np.testing.assert_allclose(chunk.actions, expected, atol=2e-5)
    assert np.ptp(chunk.actions) > 0.05  # the outputs spread: a match is not trivial


def test_diffusion_history_holds_the_previous_observation(tmp_path: Path) -> None:
    runner = PolicyRunner(load_bundle(tiny.build_diffusion_bundle(tmp_path / "dp", DDPM)), "fp32",
                          intra_op_threads=1)
    runner.set_instruction("task")
    first, second = _frame(5, 7, 1), _frame(10, 14, 2)  # the second at another size: resized
    s1, s2 = np.array([0.2, 0.4], np.float32), np.array([1.0, 2.0], np.float32)
    cond1 = runner.encode(first, s1, t_obs_ns=10**9).values["obs_encoder.cond"][0]
    # the step's first observation is repeated into both slots (LeRobot's populate_queues)
    assert cond1[0] == pytest.approx(cond1[1]) and cond1[2] == pytest.approx(cond1[3])
    runner.observe(first, s1, t_ns=10**9)
    cond2 = runner.encode(second, s2, t_obs_ns=10**9 + 100_000_000).values["obs_encoder.cond"][0]  # one period on
    norm = runner.manifest.observation.state.normalisation
    view = runner.manifest.observation.cameras[0]
    assert cond2[0] == pytest.approx(first.mean() / 255, rel=1e-5)
    assert cond2[1] == pytest.approx(prepare_view(second, view).mean() / 255, rel=1e-5)
    assert cond2[2] == pytest.approx(normalise(s1, norm).sum(), rel=1e-5)
    assert cond2[3] == pytest.approx(normalise(s2, norm).sum(), rel=1e-5)
    runner.reset()
    cond3 = runner.encode(second, s2, t_obs_ns=10**9 + 200_000_000).values["obs_encoder.cond"][0]
    assert cond3[0] == pytest.approx(cond3[1])


def test_diffusion_executes_the_declared_window_and_inpaints(tmp_path: Path) -> None:
    runner = PolicyRunner(load_bundle(tiny.build_diffusion_bundle(tmp_path / "dp", {**DDPM, "kind": "ddim",
                                                                                    "num_inference_steps": 10})),
                          "fp32", intra_op_threads=1)
    runner.set_instruction("task")
    encoded = runner.encode(_frame(5, 7), np.array([1.0, 1.0], np.float32))
    prefix = np.array([[0.25, 0.5, 0.75]], np.float32)
    chunk = runner.sample(encoded, 2, prefix=prefix)
    assert chunk.actions.shape == (2, 6, 3)
    np.testing.assert_allclose(chunk.actions[:, 0], np.broadcast_to(prefix[0], (2, 3)), atol=1e-5)


# ---- single pass + auxiliary graph ----------------------------------------------------------------------------
def test_single_pass_chunk_and_success_detector(tmp_path: Path) -> None:
    runner = PolicyRunner(load_bundle(tiny.build_single_pass_bundle(tmp_path / "act")), "fp32", intra_op_threads=1)
    assert runner.single_pass
    runner.set_instruction("anything at all")  # ACT reads no language: no word is refused
    frame, state = _frame(30, 40, 5), np.array([2.0, -1.0], np.float32)
    encoded = runner.encode(frame, state)
    view = runner.manifest.observation.cameras[0]
    c = float(prepare_view(frame, view).mean() + normalise(state, runner.manifest.observation.state.normalisation).sum())
    chunk = runner.sample(encoded, 8)
    assert chunk.actions.shape == (1, tiny.ACT_H, tiny.ACT_A)  # K = 1: nothing to sample
    expected = denormalise(tiny.act_chunk(c), runner.manifest.action.normalisation)
    np.testing.assert_allclose(chunk.actions[0], expected, atol=1e-5)
    assert runner.success_probability(encoded) == pytest.approx(1 / (1 + np.exp(-c)), rel=1e-5)
    spliced = runner.sample(encoded, 1, prefix=np.array([[9.0, 9.0, 9.0]], np.float32))
    np.testing.assert_allclose(spliced.actions[0, 0], [9.0, 9.0, 9.0])
    np.testing.assert_allclose(spliced.actions[0, 1:], chunk.actions[0, 1:], atol=1e-6)


# ---- refusals at load ---------------------------------------------------------------------------------------------
def test_graph_that_differs_from_the_manifest_is_refused(tmp_path: Path) -> None:
    import json

    directory = tiny.build_single_pass_bundle(tmp_path / "act")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["graphs"]["decoder"]["outputs"][0]["shape"] = [1, tiny.ACT_H + 1, tiny.ACT_A]
    manifest["action"].update(model_horizon=tiny.ACT_H + 1, execute_length=tiny.ACT_H + 1)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"output 'actions' has shape \[1, 7, 3\] in the graph, the manifest says "
                                          r"\[1, 8, 3\]"):
        PolicyRunner(load_bundle(directory), "fp32", intra_op_threads=1)


def test_resize_none_refuses_other_sizes(tmp_path: Path) -> None:
    from vla_edge.bundle_schema import CameraView

    view = CameraView(name="v", height=4, width=4, resize="none")
    assert prepare_view(_frame(4, 4), view).shape == (4, 4, 3)
    with pytest.raises(Exception, match=r"frames must be 4×4 \(the bundle does not resize\), got 5×4"):
        prepare_view(_frame(4, 5), view)


def test_encoder_in_pieces_with_external_data(tmp_path: Path) -> None:
    """π0's layout: encode graphs chained in declaration order, weights in an external-data file read from the
    verified bytes; the result equals the one-piece encoder's."""
    whole = PolicyRunner(load_bundle(tiny.build_single_pass_bundle(tmp_path / "whole")), "fp32", intra_op_threads=1)
    pieces_dir = tiny.build_chained_external_bundle(tmp_path / "pieces")
    assert (pieces_dir / "fp32" / "layers.onnx.data").stat().st_size == 4 * tiny.ACT_TOKENS * tiny.ACT_D
    pieces = PolicyRunner(load_bundle(pieces_dir), "fp32", intra_op_threads=1)
    frame, state = _frame(9, 9, 3), np.array([0.5, -0.5], np.float32)
    for runner in (whole, pieces):
        runner.set_instruction("go")
    a = whole.sample(whole.encode(frame, state), 1).actions
    b = pieces.sample(pieces.encode(frame, state), 1).actions
    np.testing.assert_allclose(a, b, atol=1e-6)
    # the external data is verified like every file: a changed byte is refused by name
    data = pieces_dir / "fp32" / "layers.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="layers.onnx.data"):
        PolicyRunner(load_bundle(pieces_dir, verify="structure"), "fp32", intra_op_threads=1)


def test_unclipped_output_for_parity(tmp_path: Path) -> None:
    """clip=False returns the policy's own denormalised output (parity with LeRobot, which does not clip)."""
    import json

    directory = tiny.build_single_pass_bundle(tmp_path / "act")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["action_space"].update(low=[-2.0] * 3, high=[2.0] * 3)  # narrower than what the policy can output
    (directory / "manifest.json").write_text(json.dumps(manifest))
    runner = PolicyRunner(load_bundle(directory), "fp32", intra_op_threads=1)
    runner.set_instruction("go")
    encoded = runner.encode(_frame(6, 6, 1), np.array([40.0, 40.0], np.float32))  # far out: the chunk saturates
    raw = runner.sample(encoded, 1, clip=False).actions
    clipped = runner.sample(encoded, 1).actions
    assert raw.max() > 2.5 and clipped.max() == pytest.approx(2.0)
    np.testing.assert_allclose(np.clip(raw, -2.0, 2.0), clipped)


@pytest.mark.parametrize("build", ["flow-broadcast", "flow-repeat", "diffusion", "single_pass", "pieces"])
def test_io_binding_path_gives_the_same_chunks(build: str, tmp_path: Path) -> None:
    """The GPU path (IOBinding: prefix K/V and other graph-to-graph tensors stay in the provider's memory), run here
    on the CPU provider: the same chunks as the host-array path, bit for bit."""
    if build.startswith("flow"):
        directory = tiny.build_flow_bundle(tmp_path / "b", share=build.split("-")[1])
        frames: object = {"top": _frame(12, 16, 1), "wrist": _frame(20, 20, 2)}
        state = np.array([0.3, -1.0], np.float32)
    elif build == "diffusion":
        directory = tiny.build_diffusion_bundle(tmp_path / "b", {**DDPM, "num_inference_steps": 10})
        frames, state = _frame(5, 7, 3), np.array([0.5, 3.0], np.float32)
    elif build == "single_pass":
        directory = tiny.build_single_pass_bundle(tmp_path / "b")
        frames, state = _frame(9, 9, 4), np.array([0.5, -0.5], np.float32)
    else:
        directory = tiny.build_chained_external_bundle(tmp_path / "b")
        frames, state = _frame(9, 9, 4), np.array([0.5, -0.5], np.float32)
    chunks, devices = [], []
    for binding in (False, True):
        runner = PolicyRunner(load_bundle(directory), "fp32", intra_op_threads=1, seed=5, io_binding=binding)
        runner.set_instruction("pick up the red cube")
        encoded = runner.encode(frames, state)  # type: ignore[arg-type]
        devices.append(sum(1 for v in encoded.values.values() if not isinstance(v, np.ndarray)))
        prefix = np.full((1, runner.action_dim), 0.25, np.float32)
        chunks.append(runner.sample(encoded, 3, prefix=prefix).actions)
    np.testing.assert_array_equal(chunks[0], chunks[1])
    assert devices[0] == 0
    if build == "flow-broadcast" or build == "pieces":
        assert devices[1] > 0  # K/V (or the chained hidden state) stayed an OrtValue between graphs
