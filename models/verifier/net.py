"""The checkpoint verifier's network, its training and its ONNX export.

Two parts, trained one after the other, exported as one graph:

* **scene perception** (a small CNN, run on each frame): where each block is — which bin or none, one 5-way
  answer per block colour — and which block the gripper holds. Trained on every distinct frame of the rollouts
  with the simulator's state as labels (training only; at run time it sees the frame alone);
* **window head** (an MLP): the perception of the frame before the window and of the frame after it, and the
  window's instructions (word embeddings + word positions, averaged per instruction, one slot per instruction in
  order: the last instruction about a block wins) → P(the scene is as the instructions should have left it).
  Trained on the windows, on the perception's outputs (cheap: thousands of epochs' worth of windows in seconds).

Input of the exported graph: ``before``/``after`` (B, 96, 96, 3) uint8, ``tokens`` (B, max_steps, max_words) int64
(0 = pad); output ``p_expected`` (B,). About 0.5 M parameters, ~2.5 M multiply-adds per frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MAX_WORDS = 12
N_COLOURS, N_PLACES = 4, 5  # per block: one of 4 bins, or none
STATE_DIM = N_COLOURS * N_PLACES + (N_COLOURS + 1)  # + which block is held (or none)


@dataclass(frozen=True)
class VerifierConfig:
    vocabulary_size: int
    max_steps: int = 5
    max_words: int = MAX_WORDS
    image_size: int = 96
    word_dim: int = 32
    slot_dim: int = 32
    state_dim: int = 64
    hidden: int = 128


class ScenePerception(nn.Module):
    """frame (B, H, W, 3) uint8 → logits of each block's place (B, 4, 5) and of the held block (B, 5)."""

    def __init__(self, image_size: int = 96) -> None:
        super().__init__()
        self.convs = nn.Sequential(  # 4×4 patches first: full resolution in, a quarter of the work after
            nn.Conv2d(5, 24, 4, stride=4), nn.ReLU(),
            nn.Conv2d(24, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        )
        side = image_size // 16
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU())
        self.places = nn.Linear(128, N_COLOURS * N_PLACES)
        self.held = nn.Linear(128, N_COLOURS + 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, image_size), torch.linspace(-1, 1, image_size), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = frame.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        features = self.trunk(self.convs(torch.cat([image, self.coords.expand(image.shape[0], -1, -1, -1)], dim=1)))
        return self.places(features).view(-1, N_COLOURS, N_PLACES), self.held(features)

    def state(self, frame: torch.Tensor) -> torch.Tensor:
        """The perceived state as probabilities, (B, STATE_DIM): what the window head reads."""
        places, held = self(frame)
        return torch.cat([torch.softmax(places, -1).flatten(1), torch.softmax(held, -1)], dim=1)


class WindowHead(nn.Module):
    """The expectation, built instruction by instruction: a recurrent state starts from the perception of the frame
    before the window and takes each instruction in turn (a GRU cell; an empty slot leaves it as it is), so "the
    last instruction about a block wins" is what the cell has to learn, not a fixed combination of slots. Then the
    expectation, the perception of the frame after, and their product → an MLP → the logit."""

    def __init__(self, cfg: VerifierConfig) -> None:
        super().__init__()
        self.words = nn.Embedding(cfg.vocabulary_size, cfg.word_dim, padding_idx=0)
        self.word_positions = nn.Parameter(torch.zeros(cfg.max_words, cfg.word_dim))
        self.slot = nn.Sequential(nn.Linear(cfg.word_dim, cfg.slot_dim), nn.ReLU())
        self.start = nn.Sequential(nn.Linear(STATE_DIM, cfg.state_dim), nn.Tanh())
        self.cell = nn.GRUCell(cfg.slot_dim, cfg.state_dim)
        self.expect = nn.Linear(cfg.state_dim, STATE_DIM)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.state_dim + 3 * STATE_DIM, cfg.hidden), nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.hidden // 2), nn.ReLU(),
            nn.Linear(cfg.hidden // 2, 1),
        )
        self.max_steps = cfg.max_steps

    def forward(self, before: torch.Tensor, after: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        present = (tokens > 0).float()
        words = (self.words(tokens) + self.word_positions) * present[..., None]
        count = present.sum(-1, keepdim=True)
        slots = self.slot(words.sum(2) / count.clamp(min=1.0))  # (B, S, slot_dim)
        used = (count > 0).float()  # (B, S, 1)
        state = self.start(before)
        for k in range(self.max_steps):
            state = used[:, k] * self.cell(slots[:, k], state) + (1.0 - used[:, k]) * state
        expected = self.expect(state)
        return self.mlp(torch.cat([state, expected, after, expected * after], dim=1)).squeeze(-1)


class CheckpointVerifierNet(nn.Module):
    def __init__(self, cfg: VerifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.perception = ScenePerception(cfg.image_size)
        self.head = WindowHead(cfg)

    def forward(self, before: torch.Tensor, after: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logit of P(as expected), (B,)."""
        return self.head(self.perception.state(before), self.perception.state(after), tokens)


@dataclass
class TrainConfig:
    perception_epochs: int = 12
    head_epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    swap_probability: float = 0.3  # instruction swaps added on the fly (labels recomputed by the rule)
    label_smoothing: float = 0.02  # head targets 0.02 / 0.98: P stays off the 0/1 rails, thresholds stay robust
    seed: int = 0
    threads: int = 1  # on two shared cores, one torch thread trains ~3x faster than two (measured)
    flips: bool = True  # perception: mirror frames left-right / top-bottom (bins swap to match)


def _cosine(optimiser: torch.optim.Optimizer, base: float, progress: float) -> None:
    for group in optimiser.param_groups:
        group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_perception(model: ScenePerception, frames: np.ndarray, places: np.ndarray, held: np.ndarray,
                     cfg: TrainConfig, on_log: Callable[[str], None] | None = None) -> dict[str, float]:
    """``places`` (N, 4): 0..3 the bin of each block, 4 none; ``held`` (N,): 0 none, 1..4 the held block."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n = frames.shape[0]
    steps = math.ceil(n / cfg.batch_size)
    frames_t = torch.from_numpy(frames)
    started, step, loss_sum, seen = time.perf_counter(), 0, 0.0, 0
    for epoch in range(cfg.perception_epochs):
        order = rng.permutation(n)
        loss_sum, seen, correct = 0.0, 0, 0
        for b in range(steps):
            index = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            _cosine(optimiser, cfg.learning_rate, step / max(cfg.perception_epochs * steps - 1, 1))
            batch, batch_places = frames_t[index], places[index]
            if cfg.flips:
                batch, batch_places = _flip(batch, batch_places, int(rng.integers(4)))
            logits_places, logits_held = model(batch)
            target_places = torch.from_numpy(batch_places).long()
            target_held = torch.from_numpy(held[index]).long()
            loss = (nn.functional.cross_entropy(logits_places.reshape(-1, N_PLACES), target_places.reshape(-1))
                    + nn.functional.cross_entropy(logits_held, target_held))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(index)
            seen += len(index)
            correct += int((logits_places.argmax(-1) == target_places).all(-1).sum())
            step += 1
        if on_log is not None:
            on_log(f"perception epoch {epoch + 1}/{cfg.perception_epochs}: loss {loss_sum / seen:.4f}, scenes "
                   f"fully right {correct / seen:.1%} ({time.perf_counter() - started:.0f} s)")
    return {"loss": loss_sum / max(seen, 1), "seconds": time.perf_counter() - started}


# The world is symmetric about both axes: mirroring a frame left-right swaps the left and right bins (indices 0, 1
# of hil.world.BINS), top-bottom swaps top and bottom (2, 3); "none" (4) stays.
_SWAP_LR = np.array([1, 0, 2, 3, 4])
_SWAP_TB = np.array([0, 1, 3, 2, 4])


def _flip(frames: torch.Tensor, places: np.ndarray, which: int) -> tuple[torch.Tensor, np.ndarray]:
    if which & 1:
        frames, places = torch.flip(frames, dims=[2]), _SWAP_LR[places]
    if which & 2:
        frames, places = torch.flip(frames, dims=[1]), _SWAP_TB[places]
    return frames, places


@torch.no_grad()
def perceive(model: ScenePerception, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = [model.state(torch.from_numpy(frames[i : i + batch_size])).numpy() for i in range(0, len(frames), batch_size)]
    model.train()
    return np.concatenate(out) if out else np.zeros((0, STATE_DIM), np.float32)


@dataclass
class Windows:
    """Windows for the head: scene indices (into a perceived-state table), tokens, labels."""

    before: np.ndarray
    after: np.ndarray
    tokens: np.ndarray
    labels: np.ndarray


def train_head(head: WindowHead, states: np.ndarray, windows: Windows, cfg: TrainConfig,
               augment: Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
               on_log: Callable[[str], None] | None = None) -> dict[str, float]:
    torch.manual_seed(cfg.seed + 1)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed + 1)
    optimiser = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n = windows.labels.shape[0]
    steps = math.ceil(n / cfg.batch_size)
    states_t = torch.from_numpy(states.astype(np.float32))
    started, step, loss_sum, seen = time.perf_counter(), 0, 0.0, 0
    for epoch in range(cfg.head_epochs):
        order = rng.permutation(n)
        loss_sum, seen = 0.0, 0
        for b in range(steps):
            index = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            tokens, labels = windows.tokens[index], windows.labels[index]
            if augment is not None:
                tokens, labels = augment(rng, index)
            _cosine(optimiser, cfg.learning_rate, step / max(cfg.head_epochs * steps - 1, 1))
            logits = head(states_t[windows.before[index]], states_t[windows.after[index]], torch.from_numpy(tokens))
            targets = torch.from_numpy(labels) * (1.0 - 2 * cfg.label_smoothing) + cfg.label_smoothing
            loss = nn.functional.binary_cross_entropy_with_logits(logits, targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(index)
            seen += len(index)
            step += 1
        if on_log is not None and (epoch + 1) % 10 == 0:
            on_log(f"head epoch {epoch + 1}/{cfg.head_epochs}: loss {loss_sum / seen:.4f} "
                   f"({time.perf_counter() - started:.0f} s)")
    return {"loss": loss_sum / max(seen, 1), "seconds": time.perf_counter() - started}


@torch.no_grad()
def predict_head(head: WindowHead, states: np.ndarray, windows: Windows) -> np.ndarray:
    head.eval()
    states_t = torch.from_numpy(states.astype(np.float32))
    logits = head(states_t[windows.before], states_t[windows.after], torch.from_numpy(windows.tokens))
    head.train()
    return torch.sigmoid(logits).numpy()


class _Exported(nn.Module):
    def __init__(self, model: CheckpointVerifierNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, before: torch.Tensor, after: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(before, after, tokens))


def export_onnx(model: CheckpointVerifierNet, path, opset: int = 17) -> None:
    """One graph: before, after (uint8, (B, 96, 96, 3)), tokens (int64, (B, S, W)) → p_expected (float32, (B,))."""
    import warnings

    cfg = model.cfg
    model.eval()
    example = (
        torch.zeros(1, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8),
        torch.zeros(1, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8),
        torch.ones(1, cfg.max_steps, cfg.max_words, dtype=torch.int64),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Exported(model), example, str(path), input_names=["before", "after", "tokens"],
            output_names=["p_expected"], opset_version=opset, dynamo=False,
            dynamic_axes={"before": {0: "batch"}, "after": {0: "batch"}, "tokens": {0: "batch"},
                          "p_expected": {0: "batch"}},
        )
    model.train()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(module: nn.Module, path) -> None:
    """A module's tensors as a plain .npz (no pickle), to reuse a trained part between builds."""
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})


def load_weights(module: nn.Module, path) -> None:
    with np.load(path, allow_pickle=False) as data:
        module.load_state_dict({k: torch.from_numpy(data[k]) for k in data.files})
