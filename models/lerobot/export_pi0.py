"""π0 and π0.5: the PaliGemma prefix exported piece by piece (``embed``: SigLIP per view + the language embedding;
then ``layers_AA_BB`` blocks of the Gemma backbone, each returning its layers' keys and values), and the Gemma
action-expert step run once per flow-matching step. Sampler ``flow_matching_euler``: time 1 → 0, v = ε − a.

Why pieces: the 3.5 B π0 in fp32 is ~13 GB of weights; one graph would need the whole backbone in one ONNX
protobuf (plus its export copies) at once. Each block is exported, checked and quantized on its own with its
weights in an external data file, so the build holds the torch model plus one block.

Every graph wraps LeRobot's own modules: ``embed`` calls ``PI0Pytorch.embed_prefix``; a block runs the backbone's
own decoder layers (``PiGemmaModel.layers[a:b]``) as ``PiGemmaModel.forward`` runs them (rotary embedding of the
position ids, LeRobot's 4-D prefix mask, a DynamicCache filled by the layers); the step rebuilds the prefix cache
and calls ``PI0Pytorch.denoise_step``, expanding the batch-1 keys/values (and state, pad mask) to the K samples
in-graph. π0.5 is the same layout: its state enters the prompt (``state_in_prompt``: normalised, 256 bins) instead
of the step, and its expert uses adaptive RMSNorm on the time (inside LeRobot's denoise_step). LeRobot 0.6.1
writes the state's own values into the prompt, not padded to max_state_dim (``pad_to: null``; a first import that
padded to 32 still passed fp32 parity at MAE 1e-3 with random weights, which is why the prompt tokens were
compared directly).

Fixes: the models are exported in fp32 (LeRobot's bf16 casts give graphs ONNX Runtime's CPU provider cannot run:
``Expand(13)`` has no bf16 kernel); the prompt is always padded to ``tokenizer_max_length`` (LeRobot's π0
processors already pad to max_length); CumSum on bool masks is cast to int64 when an exporter leaves it.
Images arrive prepared by the runtime as LeRobot prepares them: resized with padding centred (openpi's
``resize_with_pad_torch``), mapped to [−1, 1], pad value −1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.lerobot.export_smolvla import ExportRefused, language_section, pad_tokens, tokenizer_json
from models.lerobot.plan import ExportPlan, GraphPlan, InputDecl, TensorDecl
from models.lerobot.sections import action_space, names, norm_mode, normalisation, view_name

__all__ = ["ExportRefused", "plan"]
BLOCK_BYTES = 1_600_000_000  # fp32 bytes per prefix block when --layers-per-block is not given (~3 Gemma-2B layers)


def _embed_module(policy: Any, views: int) -> Any:
    import torch

    model = policy.model

    class Embed(torch.nn.Module):
        """(lang_tokens, lang_masks, image_<view>..., mask_<view>...) → prefix_embs [1, P, W], prefix_pad_mask."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, lang_tokens: torch.Tensor, lang_masks: torch.Tensor,
                    *images_and_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            images, masks = list(images_and_masks[:views]), list(images_and_masks[views:])
            embs, pad_masks, _att = self.model.embed_prefix(images, masks, lang_tokens, lang_masks)
            return embs, pad_masks

    return Embed().eval()


def _prefix_mask(pad_masks: Any) -> tuple[Any, Any]:
    """LeRobot's prefix attention (all prefix att_masks are 0: bidirectional over valid tokens) and positions."""
    import torch
    from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d

    att = torch.zeros_like(pad_masks)
    mask_4d = prepare_attention_masks_4d(make_att_2d_masks(pad_masks, att))
    position_ids = torch.cumsum(pad_masks, dim=1) - 1
    return mask_4d, position_ids


def _block_module(policy: Any, first: int, last: int) -> Any:
    import torch
    from transformers import DynamicCache

    lm = policy.model.paligemma_with_expert.paligemma.model.language_model

    class Block(torch.nn.Module):
        """(hidden [1, P, W], prefix_pad_mask [1, P]) → hidden after layers first..last, their keys and values."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(lm.layers[first:last + 1])
            self.rotary_emb = lm.rotary_emb

        def forward(self, hidden: torch.Tensor, prefix_pad_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            mask_4d, position_ids = _prefix_mask(prefix_pad_mask)
            cache = DynamicCache()
            cache_position = torch.arange(hidden.shape[1], device=hidden.device)
            position_embeddings = self.rotary_emb(hidden, position_ids)
            for layer in self.layers:
                hidden = layer(hidden, attention_mask=mask_4d, position_ids=position_ids, past_key_values=cache,
                               use_cache=True, cache_position=cache_position, position_embeddings=position_embeddings)
            out = [hidden]
            for index in range(first, last + 1):
                out += [cache.layers[index].keys, cache.layers[index].values]
            return tuple(out)

    return Block().eval()


def _step_module(policy: Any, layers: int, with_state: bool) -> Any:
    import torch
    from transformers import DynamicCache

    model = policy.model

    class ExpertStep(torch.nn.Module):
        """(x_t [K, H, A], time [K], [state [1, S]], prefix_pad_mask [1, P], past_key_<l>, past_value_<l>...) → v."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x_t: torch.Tensor, time: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            k = x_t.shape[0]
            rest_list = list(rest)
            state = rest_list.pop(0).expand(k, -1) if with_state else None
            pad = rest_list.pop(0).expand(k, -1)
            cache = DynamicCache()
            for layer in range(layers):
                keys, values = rest_list[2 * layer], rest_list[2 * layer + 1]
                cache.update(keys.expand(k, -1, -1, -1), values.expand(k, -1, -1, -1), layer)
            if with_state:
                return self.model.denoise_step(state=state, prefix_pad_masks=pad, past_key_values=cache, x_t=x_t,
                                               timestep=time)
            return self.model.denoise_step(prefix_pad_masks=pad, past_key_values=cache, x_t=x_t, timestep=time)

    return ExpertStep().eval()


def blocks(layers: int, per_block: int) -> list[tuple[int, int]]:
    return [(a, min(a + per_block, layers) - 1) for a in range(0, layers, per_block)]


def _layers_per_block(lm: Any, options: Any) -> int:
    given = getattr(options, "layers_per_block", None)
    if given:
        return int(given)
    per_layer = sum(p.numel() for p in lm.layers[0].parameters()) * 4
    return max(1, BLOCK_BYTES // max(per_layer, 1))


def plan(ck: Any, options: Any, batch: dict[str, Any]) -> ExportPlan:
    import torch
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    from models.lerobot.export_smolvla import _tokenizer_step

    cfg = ck.config
    policy = ck.policy
    kind = ck.policy_type
    with_state = kind == "pi0"
    if cfg.empty_cameras:
        raise ExportRefused(f"{kind} with empty_cameras > 0 is not supported by this importer yet")
    if getattr(cfg, "use_relative_actions", False):
        raise ExportRefused(f"{kind} with use_relative_actions: the runtime executes absolute actions")
    if cfg.rtc_config is not None and getattr(cfg.rtc_config, "enabled", False):
        raise ExportRefused(f"{kind} with real-time chunking (rtc_config.enabled): the runtime's committed-prefix "
                            "inpainting replaces it; import with RTC disabled")
    image_keys = list(cfg.image_features)
    lm = policy.model.paligemma_with_expert.paligemma.model.language_model
    text = lm.config
    n_layers, kv_heads, head_dim, width = text.num_hidden_layers, text.num_key_value_heads, text.head_dim, \
        text.hidden_size
    a, s = cfg.action_feature.shape[0], cfg.robot_state_feature.shape[0]
    step = _tokenizer_step(ck.preprocessor)
    length = int(step.max_length)
    images, masks = policy._preprocess_images(dict(batch))  # noqa: SLF001 - LeRobot's own resize-with-pad, [-1, 1]
    res_h, res_w = cfg.image_resolution
    sources: dict[str, np.ndarray] = {
        "language.tokens": pad_tokens(batch[OBS_LANGUAGE_TOKENS].numpy(), length,
                                      int(step.input_tokenizer.pad_token_id or 0)),
        "language.attention_mask": pad_tokens(batch[OBS_LANGUAGE_ATTENTION_MASK].numpy(), length, 0).astype(bool),
    }
    if with_state:
        sources["observation.state"] = policy.prepare_state(batch).numpy().astype(np.float32)
    inputs = [InputDecl("lang_tokens", "int64", [1, length], source="language.tokens"),
              InputDecl("lang_masks", "bool", [1, length], source="language.attention_mask")]
    cameras, image_inputs, mask_inputs = [], [], []
    for key, image, mask in zip(image_keys, images, masks, strict=True):
        view = view_name(key)
        cameras.append({"name": view, "height": res_h, "width": res_w, "resize": "resize_with_pad",
                        "pad_side": "both", "interpolation": "bilinear", "pad_value": -1.0, "dtype": "float32",
                        "layout": "chw", "value_range": [-1.0, 1.0], "lerobot_key": key})
        image_inputs.append(InputDecl(f"image_{view}", "float32", [1, 3, res_h, res_w],
                                      source=f"observation.image.{view}"))
        mask_inputs.append(InputDecl(f"mask_{view}", "bool", [1], source=f"observation.image_mask.{view}"))
        sources[f"observation.image.{view}"] = image.numpy().astype(np.float32)
        sources[f"observation.image_mask.{view}"] = mask.numpy().astype(bool)
    inputs += image_inputs + mask_inputs
    with torch.no_grad():
        embs, _ = _embed_module(policy, len(image_keys))(*[torch.from_numpy(sources[i.source]) for i in inputs])
    prefix = int(embs.shape[1])
    graphs = [GraphPlan(name="embed", role="encode", build=lambda: _embed_module(policy, len(image_keys)),
                        inputs=inputs, outputs=[TensorDecl("prefix_embs", "float32", [1, prefix, width]),
                                                TensorDecl("prefix_pad_mask", "bool", [1, prefix])],
                        exporter="dynamo", fixes=["cast_bool_cumsum"],
                        int8_candidates=["matmul", "matmul+gemm", "matmul+gemm+conv"])]
    hidden_source = "embed.prefix_embs"
    per_block = _layers_per_block(lm, options)
    kv_sources: list[str] = []
    for first, last in blocks(n_layers, per_block):
        name = f"layers_{first:02d}_{last:02d}"
        outputs = [TensorDecl("hidden_out", "float32", [1, prefix, width])]
        for index in range(first, last + 1):
            outputs += [TensorDecl(f"past_key_{index}", "float32", [1, kv_heads, prefix, head_dim]),
                        TensorDecl(f"past_value_{index}", "float32", [1, kv_heads, prefix, head_dim])]
            kv_sources += [f"{name}.past_key_{index}", f"{name}.past_value_{index}"]
        graphs.append(GraphPlan(
            name=name, role="encode", build=lambda f=first, t=last: _block_module(policy, f, t),
            inputs=[InputDecl("hidden", "float32", [1, prefix, width], source=hidden_source),
                    InputDecl("prefix_pad_mask", "bool", [1, prefix], source="embed.prefix_pad_mask")],
            outputs=outputs, exporter="dynamo", fixes=["cast_bool_cumsum"], int8_candidates=["matmul"]))
        hidden_source = f"{name}.hidden_out"
    step_inputs = [InputDecl("x_t", "float32", ["k", cfg.chunk_size, cfg.max_action_dim], source="sampler.x"),
                   InputDecl("time", "float32", ["k"], source="sampler.t")]
    if with_state:
        step_inputs.append(InputDecl("state", "float32", [1, cfg.max_state_dim], source="observation.state",
                                     share="broadcast"))
    step_inputs.append(InputDecl("prefix_pad_mask", "bool", [1, prefix], source="embed.prefix_pad_mask",
                                 share="broadcast"))
    for src in kv_sources:
        step_inputs.append(InputDecl(src.split(".", 1)[1], "float32", [1, kv_heads, prefix, head_dim], source=src,
                                     share="broadcast"))
    graphs.append(GraphPlan(name="expert_step", role="step", build=lambda: _step_module(policy, n_layers, with_state),
                            inputs=step_inputs,
                            outputs=[TensorDecl("velocity", "float32", ["k", cfg.chunk_size, cfg.max_action_dim])],
                            exporter="dynamo", fixes=["cast_bool_cumsum"], int8_candidates=["matmul", "matmul+gemm"]))
    state_names = names(options.state_names, s, "state", "state")
    action_names = names(options.action_names, a, "action", "action")
    stand_in = ck.tokenizer_dir is not None and (ck.tokenizer_dir / "STAND_IN_TOKENIZER.txt").is_file()
    origin = (ck.tokenizer_dir / "STAND_IN_TOKENIZER.txt").read_text().strip() if stand_in else \
        f"the checkpoint's processor: {step.tokenizer_name}"
    if with_state:
        language = language_section(step, "{task}\n", stand_in, origin)
    else:
        language = language_section(step, "Task: {task}, State: {state};\nAction: ", stand_in, origin,
                                    clean_task=True, state_in_prompt={"bins": 256, "pad_to": None})
    sections = {
        "observation": {
            "cameras": cameras,
            "state": {"names": state_names,
                      "normalisation": normalisation(norm_mode(cfg, "STATE"), ck.stats.get("observation.state")),
                      "padded_dim": cfg.max_state_dim},
            "history": 1,
        },
        "language": language,
        "action": {"normalisation": normalisation(norm_mode(cfg, "ACTION"), ck.stats.get("action")),
                   "padded_dim": cfg.max_action_dim, "model_horizon": cfg.chunk_size, "execute_start": 0,
                   "execute_length": cfg.n_action_steps},
        "sampler": {"kind": "flow_matching_euler", "steps": cfg.num_inference_steps, "time_start": 1.0,
                    "time_end": 0.0, "velocity": "noise_minus_action", "output": "expert_step.velocity"},
        "action_space": action_space(ck.stats["action"], action_names),
    }
    notes = [f"{kind}: embed (LeRobot's embed_prefix) + {len(graphs) - 2} backbone blocks of {per_block} layer(s) "
             f"(keys/values out, external data) + expert_step (LeRobot's denoise_step on the rebuilt cache, "
             f"expanded to K in-graph); fp32 export (LeRobot's bf16 casts have no ONNX Runtime CPU kernels); "
             f"torch.export; prompt padded to {length} tokens"]
    return ExportPlan(policy_type=kind, graphs=graphs, sections=sections, example_sources=sources, notes=notes,
                      tokenizer_json=tokenizer_json(step.input_tokenizer))
