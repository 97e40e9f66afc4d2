"""The reference policy in PyTorch eager, with the very weights of a bundle's fp32 graphs (what a LeRobot user runs).

The weights are read back from ``fp32/*.onnx`` by name (``onnx.numpy_helper``), so the comparison holds for any
bundle, with or without its training checkpoint: the export rewrote each Linear weight ``X.weight`` as the
transposed ``X.weight_kn``; every other tensor keeps its PyTorch name. ``parity_max_abs`` proves it worked.

Imports torch: benchmark processes only, never the runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from models.reference.net import NetConfig, ReferenceVLA
from vla_edge.bundle import Bundle


def _initializers(bundle: Bundle) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for graph in ("instruction_encoder", "observation_encoder", "denoiser"):
        model = onnx.load(str(bundle.graph_path("fp32", graph)))
        for init in model.graph.initializer:
            weights[f"{graph}.{init.name}"] = numpy_helper.to_array(init)
    return weights


def net_config_from(bundle: Bundle, weights: dict[str, np.ndarray]) -> NetConfig:
    """Recover the network's sizes from the manifest and the weight shapes."""
    m = bundle.manifest
    blocks = {key.split(".")[2] for key in weights if key.startswith("denoiser.blocks.")}
    return NetConfig(
        vocab_size=weights["instruction_encoder.embed.weight"].shape[0],
        image_size=m.image_height,
        state_dim=m.state_dim,
        action_dim=m.action_dim,
        horizon=m.horizon,
        token_dim=weights["instruction_encoder.embed.weight"].shape[1],
        instruction_dim=m.instruction_features_dim,
        conv_channels=weights["observation_encoder.patchify.weight"].shape[0],
        keypoints=weights["observation_encoder.conv4.weight"].shape[0],
        hidden=weights["denoiser.from_context.weight_kn"].shape[1],
        embedding_dim=m.embedding_dim,
        context_dim=m.context_dim,
        time_dim=weights["denoiser.from_time.0.weight_kn"].shape[0],
        denoiser_blocks=len(blocks),
    )


INFERENCE_MODULES = ("instruction_encoder", "observation_encoder", "denoiser")


def load_reference(bundle: Bundle) -> ReferenceVLA:
    """A ``ReferenceVLA`` holding exactly the fp32 graphs' weights; raises KeyError naming a missing tensor."""
    weights = _initializers(bundle)
    model = ReferenceVLA(net_config_from(bundle, weights))
    state = {}
    for key in model.state_dict():
        if key.split(".")[0] not in INFERENCE_MODULES:
            state[key] = model.state_dict()[key]  # a training-only head (e.g. an auxiliary loss): never exported
        elif key in weights:
            state[key] = torch.from_numpy(weights[key].copy())
        elif key.endswith(".weight") and key.removesuffix(".weight") + ".weight_kn" in weights:
            state[key] = torch.from_numpy(np.ascontiguousarray(weights[key.removesuffix(".weight") + ".weight_kn"].T))
        else:
            raise KeyError(f"{key} is not in the bundle's fp32 graphs")
    model.load_state_dict(state, strict=True)
    return model.eval()


class TorchChunkRunner:
    """One chunk the way eager PyTorch code does it: encode once, then K samples through the Euler steps."""

    def __init__(self, bundle: Bundle, threads: int, device: str = "cpu") -> None:
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = load_reference(bundle).to(self.device)
        m = bundle.manifest
        self.horizon, self.action_dim, self.steps = m.horizon, m.action_dim, m.denoising_steps
        self.tokenizer = bundle.tokenizer()
        self._features: torch.Tensor | None = None

    @torch.inference_mode()
    def set_instruction(self, text: str) -> None:
        tokens = torch.from_numpy(self.tokenizer.encode(text)).to(self.device)
        self._features = self.model.instruction_encoder(tokens)

    @torch.inference_mode()
    def chunk(self, image: np.ndarray, state: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """(K, H, A) normalised actions for one observation, from the given initial noise."""
        assert self._features is not None, "set_instruction first"
        device = self.device
        context, _ = self.model.observation_encoder(
            torch.from_numpy(image[None]).to(device),
            torch.from_numpy(state[None].astype(np.float32)).to(device),
            self._features,
        )
        k = noise.shape[0]
        context = context.expand(k, -1)
        x = torch.from_numpy(noise).to(device)
        dt = 1.0 / self.steps
        for step in range(self.steps):
            t = torch.full((k,), step * dt, device=device)
            x = x + dt * self.model.denoiser(x, t, context)
        return x.cpu().numpy()  # the copy back waits for the GPU, so the time covers the whole chunk


def parity_max_abs(bundle: Bundle, runner: TorchChunkRunner, image: np.ndarray, state: np.ndarray, text: str) -> float:
    """Largest |torch - ORT fp32| over one chunk from the same noise: ~1e-6 when the weights are the same."""
    from vla_edge.policy import PolicyRunner

    ort_runner = PolicyRunner(bundle, precision="fp32", providers=["CPUExecutionProvider"], intra_op_threads=1)
    noise = np.random.default_rng(0).standard_normal((2, runner.horizon, runner.action_dim)).astype(np.float32)
    ort_runner.set_instruction(text)
    ort_chunk = ort_runner.sample(ort_runner.encode(image, state), 2, noise=noise).actions
    runner.set_instruction(text)
    torch_norm = runner.chunk(image, state, noise)
    space = bundle.manifest.action_space
    torch_chunk = np.clip(ort_runner.denormalise_actions(torch_norm), space.low, space.high)
    return float(np.abs(torch_chunk - ort_chunk).max())
