"""Run inside the LeRobot environment (.venv-lerobot): the runtime's preprocessing and flow sampler against
LeRobot's own functions on the same inputs. Prints one JSON line of maximum differences.

Used by tests/policy/test_lerobot_conventions.py (a subprocess: the runtime's venv has no torch or LeRobot)."""

from __future__ import annotations

import json

import numpy as np
import torch
from lerobot.policies.common.flow_matching import euler_integrate
from lerobot.policies.common.vla_utils import resize_with_pad, resize_with_pad_torch

from vla_edge.bundle_schema import CameraView, FlowMatchingEuler, Normalisation
from vla_edge.preprocess import denormalise, normalise, prepare_view
from vla_edge.samplers import FlowSchedule

rng = np.random.default_rng(0)
out: dict[str, float] = {}
for h, w in [(480, 640), (300, 200), (512, 512)]:
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    chw = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    # SmolVLA (prepare_images): resize_with_pad(img, H, W, pad_value=0) on [0, 1], then * 2 - 1; pads left/top
    smol = (resize_with_pad(chw, 512, 512, pad_value=0) * 2.0 - 1.0)[0].numpy()
    view = CameraView(name="top", height=512, width=512, resize="resize_with_pad", pad_side="left_top",
                      interpolation="bilinear", dtype="float32", layout="chw", value_range=(-1.0, 1.0), pad_value=-1.0)
    ours = prepare_view(frame, view)
    out[f"smolvla_{h}x{w}"] = float(np.abs(ours - smol).max())
    # pi0 (_preprocess_images): resize_with_pad_torch on [0, 1] channels-last, centred, pad 0, then * 2 - 1
    hwc = torch.from_numpy(frame)[None].float() / 255.0
    pi0 = (resize_with_pad_torch(hwc, 224, 224) * 2.0 - 1.0)[0].numpy()
    view = CameraView(name="base", height=224, width=224, resize="resize_with_pad", pad_side="both",
                      interpolation="bilinear", dtype="float32", layout="hwc", value_range=(-1.0, 1.0), pad_value=-1.0)
    out[f"pi0_{h}x{w}"] = float(np.abs(prepare_view(frame, view) - pi0).max())

# Normalisation: LeRobot's formulas (mean_std with eps, min_max with a zero range)
x = rng.normal(size=(5, 4)).astype(np.float32)
mean, std = rng.normal(size=4).astype(np.float32), rng.uniform(0.1, 2, size=4).astype(np.float32)
low, high = -np.abs(rng.normal(size=4)).astype(np.float32), np.abs(rng.normal(size=4)).astype(np.float32)
high[2] = low[2]
ms = Normalisation(mode="mean_std", mean=mean.tolist(), std=std.tolist())
mm = Normalisation(mode="min_max", low=low.tolist(), high=high.tolist())
t = torch.from_numpy(x)
ref_ms = ((t - torch.from_numpy(mean)) / (torch.from_numpy(std) + 1e-8)).numpy()
d = torch.from_numpy(high - low)
d = torch.where(d == 0, torch.tensor(1e-8), d)
ref_mm = (2 * (t - torch.from_numpy(low)) / d - 1).numpy()
out["normalise_mean_std"] = float(np.abs(normalise(x, ms) - ref_ms).max())
out["normalise_min_max"] = float(np.abs(normalise(x, mm) - ref_mm).max())
out["denormalise_mean_std"] = float(np.abs(denormalise(x, ms) - (t * torch.from_numpy(std) + torch.from_numpy(mean)).numpy()).max())

# The flow sampler: LeRobot's euler_integrate (time 1 -> 0, x += dt * v) vs FlowSchedule on the same field
weights = torch.from_numpy(rng.normal(size=(4, 4)).astype(np.float32))


def field(x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ weights) + time[:, None, None]


noise = torch.from_numpy(rng.normal(size=(3, 50, 4)).astype(np.float32))
reference = euler_integrate(field, noise.clone(), 10).numpy()
schedule = FlowSchedule.of(FlowMatchingEuler(kind="flow_matching_euler", steps=10, time_start=1.0, time_end=0.0,
                                             velocity="noise_minus_action", output="g.v"))
xs = noise.numpy().copy()
for time in schedule.times:
    v = field(torch.from_numpy(xs), torch.full((3,), float(time))).numpy()
    xs = xs + np.float32(schedule.coefficient) * v
out["flow_euler"] = float(np.abs(xs - reference).max())
print(json.dumps(out))
