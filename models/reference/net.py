"""The reference VLA in PyTorch: instruction encoder, observation encoder (CNN + keypoints), flow-matching denoiser.

Each of the three modules has exactly the inputs and outputs of its ONNX graph (docs/architecture.md), and the
image/state normalisation lives inside the modules, so the exported graphs take raw camera pixels and the raw
robot state. Every MatMul the int4 quantizer should touch has an input width that is a multiple of 32.

Build/train time only: importing this module imports torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetConfig:
    vocab_size: int
    image_size: int = 96
    state_dim: int = 3
    action_dim: int = 4
    horizon: int = 8
    token_dim: int = 64
    instruction_dim: int = 64  # Di
    conv_channels: int = 32
    keypoints: int = 32
    hidden: int = 256
    embedding_dim: int = 64  # E: the bottleneck whose statistics feed the OOD score
    context_dim: int = 256  # C
    time_dim: int = 64
    denoiser_blocks: int = 2

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class InstructionEncoder(nn.Module):
    """tokens int64 [B, L] (0 = padding) → instruction_features [B, Di].

    A masked mean of word embeddings followed by an MLP: the instruction grammar has one slot per word class
    (colour, bin), so word order carries no extra information and a bag of words is enough.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.token_dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(cfg.token_dim, 128), nn.GELU(), nn.Linear(128, cfg.instruction_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).to(torch.float32).unsqueeze(-1)
        words = self.embed(tokens) * mask
        pooled = words.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.mlp(pooled)


class SpatialSoftmax(nn.Module):
    """Each channel → the expected (x, y) of its activation: a keypoint in [-1, 1] image coordinates."""

    def __init__(self, size: int) -> None:
        super().__init__()
        coords = torch.linspace(-1.0, 1.0, size)
        grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("grid", torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels = features.shape[0], features.shape[1]
        attention = torch.softmax(features.reshape(batch, channels, -1), dim=-1)
        return torch.matmul(attention, self.grid).reshape(batch, channels * 2)


class ObservationEncoder(nn.Module):
    """image uint8 [B,96,96,3] RGB, state f32 [B,3], instruction_features [B,Di] → context [B,C], embedding [B,E].

    A patchifying CNN with coordinate channels; the instruction modulates (FiLM) the last feature map, so keypoints can follow
    the named block; spatial-softmax keypoints + global max features + state + instruction → MLP with an
    E-wide bottleneck (the ``embedding``) → context.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        size, ch = cfg.image_size, cfg.conv_channels
        self.register_buffer("image_mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("image_std", torch.full((1, 3, 1, 1), 0.25))
        self.register_buffer("state_mean", torch.zeros(1, cfg.state_dim))
        self.register_buffer("state_std", torch.ones(1, cfg.state_dim))
        grid = size // 4
        coords = torch.linspace(-1.0, 1.0, grid)
        grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("coord_channels", torch.stack([grid_x, grid_y]).unsqueeze(0), persistent=False)
        # 4×4 patches first: full-resolution convolutions cost most of the CPU training time and buy little,
        # because spatial-softmax keypoints interpolate between the 24×24 cells anyway.
        self.patchify = nn.Conv2d(3, ch, 4, stride=4)  # 24×24
        self.conv2 = nn.Conv2d(ch + 2, ch, 3, padding=1)
        self.conv3 = nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(cfg.instruction_dim, 2 * ch)
        self.conv4 = nn.Conv2d(ch, cfg.keypoints, 1)
        self.keypoints = SpatialSoftmax(size // 4)
        self.from_keypoints = nn.Linear(2 * cfg.keypoints, cfg.hidden)
        self.from_maxpool = nn.Linear(cfg.keypoints, cfg.hidden)
        self.from_state = nn.Linear(cfg.state_dim, cfg.hidden)
        self.from_instruction = nn.Linear(cfg.instruction_dim, cfg.hidden)
        self.to_embedding = nn.Linear(cfg.hidden, cfg.embedding_dim)
        self.to_context = nn.Sequential(
            nn.Linear(cfg.embedding_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.context_dim)
        )

    def set_normalisation(
        self, image_mean: list[float], image_std: list[float], state_mean: list[float], state_std: list[float]
    ) -> None:
        self.image_mean.copy_(torch.tensor(image_mean).reshape(1, 3, 1, 1))
        self.image_std.copy_(torch.tensor(image_std).reshape(1, 3, 1, 1))
        self.state_mean.copy_(torch.tensor(state_mean).reshape(1, -1))
        self.state_std.copy_(torch.tensor(state_std).reshape(1, -1))

    def forward(
        self, image: torch.Tensor, state: torch.Tensor, instruction_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = image.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        pixels = (pixels - self.image_mean) / self.image_std
        x = F.relu(self.patchify(pixels))
        coords = self.coord_channels.expand(x.shape[0], -1, -1, -1)
        x = F.relu(self.conv2(torch.cat([x, coords], dim=1)))
        x = self.conv3(x)
        scale, shift = self.film(instruction_features).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        x = F.relu(x * (1.0 + scale) + shift)
        x = self.conv4(x)
        keypoints = self.keypoints(x)
        presence = torch.amax(x, dim=(2, 3))
        state_norm = (state - self.state_mean) / self.state_std
        h = (
            self.from_keypoints(keypoints)
            + self.from_maxpool(presence)
            + self.from_state(state_norm)
            + self.from_instruction(instruction_features)
        )
        embedding = self.to_embedding(F.gelu(h))
        context = self.to_context(embedding)
        return context, embedding


class DenoiserBlock(nn.Module):
    """Residual MLP block; the condition (context + time) scales and shifts the normalised input (FiLM)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(width, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        x = self.norm(h) * (1.0 + scale) + shift
        return h + self.fc2(F.gelu(self.fc1(x)))


class Denoiser(nn.Module):
    """noisy_actions [N,H,A] (normalised), timestep [N] in [0,1], context [N,C] → velocity [N,H,A].

    Flow matching: x_t = (1 - t) noise + t actions, and the network predicts d x_t / d t = actions - noise.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.horizon, self.action_dim = cfg.horizon, cfg.action_dim
        half = cfg.time_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", (freqs * 1000.0).unsqueeze(0), persistent=False)
        chunk = cfg.horizon * cfg.action_dim
        self.from_actions = nn.Linear(chunk, cfg.hidden)
        self.from_time = nn.Sequential(nn.Linear(cfg.time_dim, cfg.hidden), nn.GELU())
        self.from_context = nn.Linear(cfg.context_dim, cfg.hidden)
        self.blocks = nn.ModuleList(DenoiserBlock(cfg.hidden) for _ in range(cfg.denoiser_blocks))
        self.out_norm = nn.LayerNorm(cfg.hidden, elementwise_affine=False)
        self.out = nn.Linear(cfg.hidden, chunk)

    def forward(self, noisy_actions: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n = noisy_actions.shape[0]
        angles = timestep.reshape(-1, 1) * self.freqs
        time_features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        cond = F.gelu(self.from_context(context) + self.from_time(time_features))
        h = self.from_actions(noisy_actions.reshape(n, -1)) + cond
        for block in self.blocks:
            h = block(h, cond)
        return self.out(self.out_norm(h)).reshape(n, self.horizon, self.action_dim)


class ReferenceVLA(nn.Module):
    """The three parts together, for training."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.instruction_encoder = InstructionEncoder(cfg)
        self.observation_encoder = ObservationEncoder(cfg)
        self.denoiser = Denoiser(cfg)
        # Training-only head: where the named block is, from the embedding (not exported).
        self.block_head = nn.Linear(cfg.embedding_dim, 2)

    def losses(
        self,
        tokens: torch.Tensor,
        image: torch.Tensor,
        state: torch.Tensor,
        actions_norm: torch.Tensor,
        block_xy_norm: torch.Tensor,
        noise_per_obs: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow-matching loss, auxiliary block-position loss); each observation gets ``noise_per_obs`` draws.

        The auxiliary loss gives the encoder a direct gradient toward locating the named block, which the flow
        loss alone teaches only slowly through the denoiser.
        """
        features = self.instruction_encoder(tokens)
        context, embedding = self.observation_encoder(image, state, features)
        block_loss = F.mse_loss(self.block_head(embedding), block_xy_norm)
        return self._flow_loss(context, actions_norm, noise_per_obs, generator), block_loss

    def flow_matching_loss(
        self,
        tokens: torch.Tensor,
        image: torch.Tensor,
        state: torch.Tensor,
        actions_norm: torch.Tensor,
        noise_per_obs: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean squared velocity error; each observation is paired with ``noise_per_obs`` (noise, t) draws."""
        features = self.instruction_encoder(tokens)
        context, _ = self.observation_encoder(image, state, features)
        return self._flow_loss(context, actions_norm, noise_per_obs, generator)

    def _flow_loss(
        self, context: torch.Tensor, actions_norm: torch.Tensor, noise_per_obs: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        context = context.repeat_interleave(noise_per_obs, dim=0)
        target = actions_norm.repeat_interleave(noise_per_obs, dim=0)
        # Drawn on the CPU generator and moved, so a run on a GPU sees the same random stream as one on the CPU.
        noise = torch.randn(target.shape, generator=generator).to(target.device)
        t = torch.rand(target.shape[0], generator=generator).to(target.device)
        t_b = t.reshape(-1, 1, 1)
        x_t = (1.0 - t_b) * noise + t_b * target
        velocity = self.denoiser(x_t, t, context)
        return F.mse_loss(velocity, target - noise)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
