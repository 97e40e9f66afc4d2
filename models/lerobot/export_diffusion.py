"""Diffusion Policy: an observation encoder (ResNet per view → spatial softmax, over n_obs_steps frames, with the
state) run once per chunk, and the conditional 1-D UNet run once per denoising step; sampler ``ddpm`` / ``ddim``
with every field read from LeRobot's diffusers scheduler.

Both graphs wrap LeRobot's own modules: ``DiffusionModel._prepare_global_conditioning`` and ``DiffusionModel.unet``.
The encoder crops in-graph exactly as LeRobot does at evaluation (centre crop; resize first when ``resize_shape``
is set). Fix needed: the TorchScript exporter fails in torchvision's ``center_crop`` (``Tensor doesn't define
__round__``), so both graphs use torch.export (dynamo). int8: full dynamic int8 quantizes the UNet's Conv1d as
ConvInteger, slower than fp32 on CPU (measured here: 115 vs 69 ms for the real UNet), so the op set is chosen by
measurement per graph. Of the ``horizon`` predicted actions the runtime executes ``n_action_steps`` starting at
``n_obs_steps - 1``, as LeRobot's ``generate_actions`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.lerobot.plan import ExportPlan, GraphPlan, InputDecl, TensorDecl
from models.lerobot.sections import action_space, names, norm_mode, normalisation, pixel_camera


class ExportRefused(Exception):
    """This checkpoint uses a feature the runtime cannot run; the message says which and what to do."""


def _encoder_module(policy: Any, has_images: bool) -> Any:
    import torch
    from lerobot.utils.constants import OBS_IMAGES, OBS_STATE

    class ObsEncoder(torch.nn.Module):
        """(state [1, T, S], image_<view> [1, T, 3, H, W] ...) → global_cond [1, G]."""

        def __init__(self) -> None:
            super().__init__()
            self.diffusion = policy.diffusion

        def forward(self, state: torch.Tensor, *images: torch.Tensor) -> torch.Tensor:
            batch = {OBS_STATE: state}
            if has_images:
                batch[OBS_IMAGES] = torch.stack(list(images), dim=2)  # [B, T, N, C, H, W] as LeRobot stacks them
            return self.diffusion._prepare_global_conditioning(batch)  # noqa: SLF001 - LeRobot's own encoder path

    return ObsEncoder().eval()


def _unet_module(policy: Any) -> Any:
    import torch

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = policy.diffusion.unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
            return self.unet(sample, timestep, global_cond=global_cond)

    return Unet().eval()


def sampler_section(policy: Any, output: str) -> dict[str, Any]:
    scheduler = policy.diffusion.noise_scheduler
    sc = scheduler.config
    kind = "ddim" if type(scheduler).__name__ == "DDIMScheduler" else "ddpm"
    section: dict[str, Any] = {
        "kind": kind,
        "num_train_timesteps": int(sc.num_train_timesteps),
        "num_inference_steps": int(policy.diffusion.num_inference_steps),
        "beta_schedule": str(sc.beta_schedule),
        "beta_start": float(sc.beta_start),
        "beta_end": float(sc.beta_end),
        "prediction_type": str(sc.prediction_type),
        "clip_sample": bool(sc.clip_sample),
        "clip_sample_range": float(getattr(sc, "clip_sample_range", 1.0)),
        "timestep_spacing": str(getattr(sc, "timestep_spacing", "leading")),
        "steps_offset": int(getattr(sc, "steps_offset", 0)),
        "output": output,
    }
    if kind == "ddpm":
        section["variance_type"] = str(getattr(sc, "variance_type", "fixed_small"))
    else:
        section["eta"] = 0.0  # LeRobot calls scheduler.step without eta: DDIM's default 0
        section["set_alpha_to_one"] = bool(getattr(sc, "set_alpha_to_one", True))
    if getattr(sc, "thresholding", False):
        raise ExportRefused("the checkpoint's scheduler uses dynamic thresholding, which the runtime's sampler does "
                            "not implement")
    if getattr(sc, "rescale_betas_zero_snr", False):
        raise ExportRefused("the checkpoint's scheduler rescales betas to zero SNR, which the runtime does not do")
    return section


def plan(ck: Any, options: Any, batches: list[dict[str, Any]]) -> ExportPlan:
    """``batches``: the n_obs_steps frames of one observation, each through LeRobot's preprocessor."""
    import torch

    cfg = ck.config
    policy = ck.policy
    if cfg.env_state_feature:
        raise ExportRefused("Diffusion Policy with an environment-state input: the runtime has no source for it")
    if cfg.robot_state_feature is None:
        raise ExportRefused("Diffusion Policy without observation.state: LeRobot's encoder needs it")
    image_keys = list(cfg.image_features)
    t, s = cfg.n_obs_steps, cfg.robot_state_feature.shape[0]
    a = cfg.action_feature.shape[0]
    visual_mode = norm_mode(cfg, "VISUAL")
    stacked = {k: torch.stack([b[k] for b in batches], dim=1) for k in ["observation.state", *image_keys]}
    inputs = [InputDecl("state", "float32", [1, t, s], source="observation.state")]
    sources: dict[str, np.ndarray] = {"observation.state": stacked["observation.state"].numpy().astype(np.float32)}
    cameras = []
    for key in image_keys:
        c, h, w = cfg.image_features[key].shape
        cameras.append(pixel_camera(key, h, w, visual_mode, ck.stats.get(key)))
        view = cameras[-1]["name"]
        inputs.append(InputDecl(f"image_{view}", "float32", [1, t, c, h, w], source=f"observation.image.{view}"))
        sources[f"observation.image.{view}"] = stacked[key].numpy().astype(np.float32)
    with torch.no_grad():
        cond_dim = int(_encoder_module(policy, bool(image_keys))(
            *[torch.from_numpy(sources[i.source]) for i in inputs]).shape[-1])
    prediction = str(policy.diffusion.noise_scheduler.config.prediction_type)
    out_name = {"epsilon": "epsilon", "sample": "sample", "v_prediction": "v"}[prediction]
    graphs = [
        GraphPlan(name="obs_encoder", role="encode", build=lambda: _encoder_module(policy, bool(image_keys)),
                  inputs=inputs, outputs=[TensorDecl("global_cond", "float32", [1, cond_dim])], exporter="dynamo",
                  int8_candidates=["matmul", "matmul+gemm", "matmul+gemm+conv"]),
        GraphPlan(name="unet", role="step", build=lambda: _unet_module(policy),
                  inputs=[InputDecl("sample", "float32", ["k", cfg.horizon, a], source="sampler.x"),
                          InputDecl("timestep", "int64", ["k"], source="sampler.t"),
                          InputDecl("global_cond", "float32", ["k", cond_dim], source="obs_encoder.global_cond",
                                    share="repeat")],
                  outputs=[TensorDecl(out_name, "float32", ["k", cfg.horizon, a])], exporter="dynamo",
                  int8_candidates=["matmul", "matmul+gemm", "matmul+gemm+conv"]),
    ]
    state_names = names(options.state_names, s, "state", "state")
    action_names = names(options.action_names, a, "action", "action")
    sections = {
        "observation": {
            "cameras": cameras,
            "state": {"names": state_names,
                      "normalisation": normalisation(norm_mode(cfg, "STATE"), ck.stats.get("observation.state"))},
            "history": t,
        },
        "language": {"tokenizer": {"kind": "words", "vocabulary": ["<pad>", "task"]}},
        "action": {"normalisation": normalisation(norm_mode(cfg, "ACTION"), ck.stats.get("action")),
                   "model_horizon": cfg.horizon, "execute_start": t - 1, "execute_length": cfg.n_action_steps},
        "sampler": sampler_section(policy, f"unet.{out_name}"),
        "action_space": action_space(ck.stats["action"], action_names),
    }
    notes = ["Diffusion Policy: obs_encoder (LeRobot's _prepare_global_conditioning, centre crop in-graph) + unet "
             "(LeRobot's ConditionalUnet1D); both with torch.export (the TorchScript exporter fails in "
             "torchvision's center_crop)"]
    return ExportPlan(policy_type="diffusion", graphs=graphs, sections=sections, example_sources=sources, notes=notes)
