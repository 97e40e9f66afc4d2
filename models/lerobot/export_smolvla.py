"""SmolVLA: the VLM prefix (SigLIP per view + pixel-shuffle connector, language tokens, state) runs once per chunk
and returns every layer's keys and values; the action expert step runs once per flow-matching step, attending to
them. Sampler ``flow_matching_euler``: time 1 → 0, v = ε − a (x ← x − v/steps).

Both graphs wrap LeRobot's own code: the prefix calls ``VLAFlowMatching.embed_prefix`` and
``SmolVLMWithExpertModel.forward(use_cache=True)`` as ``sample_actions`` does and returns the DynamicCache's
tensors ([1, kv_heads, prefix, head_dim] per layer, after RoPE); the step rebuilds that DynamicCache from them and
calls ``VLAFlowMatching.denoise_step``. The K samples share one batch-1 prefix (``share: broadcast``): the step
graph expands keys, values and the pad mask to K itself (the self-attention layers concatenate the suffix's K/V
onto the prefix's, so the prefix must carry the batch).

Exporter: torch.export (dynamo) for both graphs; the TorchScript exporter fails inside transformers 5's
``create_bidirectional_mask`` (SigLIP), and torch.export failed on a data-dependent guard until the prompt
length was fixed (fix 1). Fixes: (1) the prefix builds its attention pattern as a Python list as long as the prompt, so any exported graph
has one token length: prompts are padded to ``tokenizer_max_length`` (LeRobot pads to the longest; the padding is
masked and does not move position ids, and parity is checked against LeRobot's own padding). (2) Position ids are
``CumSum`` of a bool mask, which ONNX Runtime refuses (no bool CumSum kernel): ``cast_bool_cumsum`` casts those
inputs to int64. Images arrive prepared
by the runtime as LeRobot prepares them: resized with padding on the left/top to ``resize_imgs_with_padding``,
mapped to [−1, 1] (pad −1). State and actions are normalised and padded to 32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.lerobot.plan import ExportPlan, GraphPlan, InputDecl, TensorDecl
from models.lerobot.sections import action_space, names, norm_mode, normalisation, view_name


class ExportRefused(Exception):
    """This checkpoint uses a feature the runtime cannot run; the message says which and what to do."""


def _prefix_module(policy: Any, views: int, layers: int) -> Any:
    import torch
    from lerobot.policies.smolvla.modeling_smolvla import make_att_2d_masks

    model = policy.model

    class Prefix(torch.nn.Module):
        """(state, lang_tokens, lang_masks, image_<view>..., mask_<view>...) → past_key_<l>, past_value_<l>...,
        prefix_pad_mask."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, state: torch.Tensor, lang_tokens: torch.Tensor, lang_masks: torch.Tensor,
                    *images_and_masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
            images, masks = list(images_and_masks[:views]), list(images_and_masks[views:])
            embs, pad_masks, att_masks = self.model.embed_prefix(images, masks, lang_tokens, lang_masks, state=state)
            att_2d = make_att_2d_masks(pad_masks, att_masks)
            position_ids = torch.cumsum(pad_masks, dim=1) - 1  # as sample_actions; the bool CumSum is fixed in ONNX
            _, cache = self.model.vlm_with_expert.forward(attention_mask=att_2d, position_ids=position_ids,
                                                          past_key_values=None, inputs_embeds=[embs, None],
                                                          use_cache=True)
            out: list[torch.Tensor] = []
            for layer in range(layers):
                out += [cache.layers[layer].keys, cache.layers[layer].values]
            return (*out, pad_masks)

    return Prefix().eval()


def _step_module(policy: Any, layers: int) -> Any:
    import torch
    from transformers import DynamicCache

    model = policy.model

    class ExpertStep(torch.nn.Module):
        """(x_t [K, H, A], time [K], prefix_pad_mask [1, P], past_key_<l> [1, ...], past_value_<l>...) → v [K, H, A]."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x_t: torch.Tensor, time: torch.Tensor, prefix_pad_mask: torch.Tensor,
                    *past: torch.Tensor) -> torch.Tensor:
            k = x_t.shape[0]
            cache = DynamicCache()
            for layer in range(layers):
                keys, values = past[2 * layer], past[2 * layer + 1]
                cache.update(keys.expand(k, -1, -1, -1), values.expand(k, -1, -1, -1), layer)
            pad = prefix_pad_mask.expand(k, -1)
            return self.model.denoise_step(prefix_pad_masks=pad, past_key_values=cache, x_t=x_t, timestep=time)

    return ExpertStep().eval()


def _prefix_length(policy: Any, views: int, layers: int, inputs: list[InputDecl], sources: dict[str, np.ndarray]) -> int:
    import torch

    with torch.no_grad():
        out = _prefix_module(policy, views, layers)(*[torch.from_numpy(sources[i.source]) for i in inputs])
    return int(out[-1].shape[1])


def tokenizer_json(tokenizer: Any) -> bytes:
    """The fast tokenizer's own tokenizer.json (with the post-processor transformers configured: BOS etc.)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportRefused("the policy's tokenizer is not a fast (Rust) tokenizer; the runtime needs tokenizer.json")
    return backend.to_str().encode("utf-8")


def _tokenizer_step(preprocessor: Any) -> Any:
    from lerobot.processor import TokenizerProcessorStep

    for step in preprocessor.steps:
        if isinstance(step, TokenizerProcessorStep):
            return step
    raise ExportRefused("the checkpoint's preprocessor has no tokenizer step")


def pad_tokens(values: np.ndarray, length: int, pad: int) -> np.ndarray:
    """[1, n] → [1, length], right-padded with ``pad`` (n <= length: the tokenizer truncates at max_length)."""
    out = np.full((values.shape[0], length), pad, dtype=values.dtype)
    out[:, : values.shape[1]] = values[:, :length]
    return out.astype(np.int64) if values.dtype != np.bool_ else out


def language_section(step: Any, prompt: str, stand_in: bool, origin: str, **extra: Any) -> dict[str, Any]:
    """The runtime tokenizes like LeRobot's TokenizerProcessorStep but always pads to max_length (see plan)."""
    tokenizer = step.input_tokenizer
    if step.padding_side != "right":
        raise ExportRefused(f"the tokenizer pads on the {step.padding_side}; the runtime pads on the right")
    padding = "max_length"
    return {"tokenizer": {
        "kind": "hf_tokenizers", "file": "tokenizer.json", "prompt": prompt, "max_length": int(step.max_length),
        "padding": padding, "truncation": bool(step.truncation), "add_special_tokens": True,
        "pad_id": int(tokenizer.pad_token_id or 0), "stand_in": stand_in, "origin": origin[:1024], **extra}}


def plan(ck: Any, options: Any, batch: dict[str, Any]) -> ExportPlan:
    cfg = ck.config
    policy = ck.policy
    if not cfg.use_cache:
        raise ExportRefused("SmolVLA with use_cache=false recomputes the prefix every step; the runtime caches it "
                            "(import a config with use_cache=true: same weights)")
    if cfg.adapt_to_pi_aloha:
        raise ExportRefused("SmolVLA with adapt_to_pi_aloha: the Aloha joint flips are not part of the runtime")
    if cfg.empty_cameras:
        raise ExportRefused("SmolVLA with empty_cameras > 0 is not supported by this importer yet")
    image_keys = list(cfg.image_features)
    model = policy.model
    layers = model.vlm_with_expert.num_vlm_layers
    text = model.vlm_with_expert.config.text_config
    kv_heads, head_dim = text.num_key_value_heads, text.head_dim
    a, s = cfg.action_feature.shape[0], cfg.robot_state_feature.shape[0]
    width, height = cfg.resize_imgs_with_padding if cfg.resize_imgs_with_padding else (None, None)
    step = _tokenizer_step(ck.preprocessor)
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    sources: dict[str, np.ndarray] = {}
    images, masks = policy.prepare_images(dict(batch))  # LeRobot's own resize-with-pad and [-1, 1] mapping
    cameras = []
    inputs = [InputDecl("state", "float32", [1, cfg.max_state_dim], source="observation.state"),
              InputDecl("lang_tokens", "int64", [1, int(step.max_length)], source="language.tokens"),
              InputDecl("lang_masks", "bool", [1, int(step.max_length)], source="language.attention_mask")]
    sources["observation.state"] = policy.prepare_state(batch).numpy().astype(np.float32)
    # The prefix's attention-mask pattern is a Python list as long as the tokens, so an exported graph has one
    # token length: the runtime pads every prompt to tokenizer_max_length (padding tokens are masked out of
    # attention and do not advance position ids, so valid tokens see exactly what LeRobot's "longest" padding
    # gives them; the parity check compares against LeRobot's own padding).
    length = int(step.max_length)
    sources["language.tokens"] = pad_tokens(batch[OBS_LANGUAGE_TOKENS].numpy(), length,
                                            int(step.input_tokenizer.pad_token_id or 0))
    sources["language.attention_mask"] = pad_tokens(batch[OBS_LANGUAGE_ATTENTION_MASK].numpy(), length, 0).astype(bool)
    image_inputs, mask_inputs = [], []
    for key, image, mask in zip(image_keys, images, masks, strict=True):
        c, h, w = cfg.image_features[key].shape
        view = view_name(key)
        rh, rw = (height, width) if height else (h, w)
        cameras.append({"name": view, "height": rh, "width": rw,
                        "resize": "resize_with_pad" if height else "none", "pad_side": "left_top",
                        "interpolation": "bilinear", "pad_value": -1.0, "dtype": "float32", "layout": "chw",
                        "value_range": [-1.0, 1.0], "lerobot_key": key})
        image_inputs.append(InputDecl(f"image_{view}", "float32", [1, c, rh, rw], source=f"observation.image.{view}"))
        mask_inputs.append(InputDecl(f"mask_{view}", "bool", [1], source=f"observation.image_mask.{view}"))
        sources[f"observation.image.{view}"] = image.numpy().astype(np.float32)
        sources[f"observation.image_mask.{view}"] = mask.numpy().astype(bool)
    inputs += image_inputs + mask_inputs
    prefix_len = _prefix_length(policy, len(image_keys), layers, inputs, sources)
    kv = []
    for layer in range(layers):
        kv += [TensorDecl(f"past_key_{layer}", "float32", [1, kv_heads, prefix_len, head_dim]),
               TensorDecl(f"past_value_{layer}", "float32", [1, kv_heads, prefix_len, head_dim])]
    pad_out = TensorDecl("prefix_pad_mask", "bool", [1, prefix_len])
    step_inputs = [InputDecl("x_t", "float32", ["k", cfg.chunk_size, cfg.max_action_dim], source="sampler.x"),
                   InputDecl("time", "float32", ["k"], source="sampler.t"),
                   InputDecl("prefix_pad_mask", "bool", [1, prefix_len], source="prefix.prefix_pad_mask",
                             share="broadcast")]
    step_inputs += [InputDecl(d.name, d.dtype, d.shape, source=f"prefix.{d.name}", share="broadcast") for d in kv]
    graphs = [
        GraphPlan(name="prefix", role="encode", build=lambda: _prefix_module(policy, len(image_keys), layers),
                  inputs=inputs, outputs=[*kv, pad_out], exporter="dynamo", fixes=["cast_bool_cumsum"],
                  int8_candidates=["matmul", "matmul+gemm", "matmul+gemm+conv"]),
        GraphPlan(name="expert_step", role="step", build=lambda: _step_module(policy, layers),
                  inputs=step_inputs, outputs=[TensorDecl("velocity", "float32", ["k", cfg.chunk_size,
                                                                                  cfg.max_action_dim])],
                  exporter="dynamo", fixes=["cast_bool_cumsum"], int8_candidates=["matmul", "matmul+gemm"]),
    ]
    state_names = names(options.state_names, s, "state", "state")
    action_names = names(options.action_names, a, "action", "action")
    stand_in = (ck.tokenizer_dir is not None and (ck.tokenizer_dir / "STAND_IN_TOKENIZER.txt").is_file())
    origin = (ck.tokenizer_dir / "STAND_IN_TOKENIZER.txt").read_text().strip() if stand_in else \
        f"the checkpoint's processor: {step.tokenizer_name}"
    sections = {
        "observation": {
            "cameras": cameras,
            "state": {"names": state_names,
                      "normalisation": normalisation(norm_mode(cfg, "STATE"), ck.stats.get("observation.state")),
                      "padded_dim": cfg.max_state_dim},
            "history": 1,
        },
        "language": language_section(step, "{task}\n", stand_in, origin),
        "action": {"normalisation": normalisation(norm_mode(cfg, "ACTION"), ck.stats.get("action")),
                   "padded_dim": cfg.max_action_dim, "model_horizon": cfg.chunk_size, "execute_start": 0,
                   "execute_length": cfg.n_action_steps},
        "sampler": {"kind": "flow_matching_euler", "steps": cfg.num_steps, "time_start": 1.0, "time_end": 0.0,
                    "velocity": "noise_minus_action", "output": "expert_step.velocity"},
        "action_space": action_space(ck.stats["action"], action_names),
    }
    notes = ["SmolVLA: prefix (LeRobot's embed_prefix + VLM forward with cache) + expert_step (LeRobot's "
             "denoise_step on a DynamicCache rebuilt from the prefix's K/V, expanded to K in-graph); torch.export "
             f"with the prompt padded to {length} tokens (a traced prefix has one token length); the TorchScript "
             "exporter fails in transformers 5's mask creation (create_bidirectional_mask)"]
    return ExportPlan(policy_type="smolvla", graphs=graphs, sections=sections, example_sources=sources, notes=notes,
                      tokenizer_json=tokenizer_json(step.input_tokenizer))
