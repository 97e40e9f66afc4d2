"""RANDOM-WEIGHT LeRobot policies of real architectures, built from their config classes, saved as lerobot-train
saves them: ``<root>/checkpoints/NNN/pretrained_model/``. For tests (``small``) and benchmarks (``real``).

Nothing here reaches a model hub:

* ACT: ``pretrained_backbone_weights=None`` (a random ResNet-18).
* SmolVLA: its policy calls ``AutoConfig`` / ``AutoProcessor.from_pretrained(vlm_model_name)``; we write a local
  folder with a hand-written SmolVLM config (``real``: SmolVLM2-500M's shape) and a processor whose tokenizer is
  a STAND-IN trained here with the ``tokenizers`` library (SmolVLM's real tokenizer lives on the hub), and point
  ``vlm_model_name`` at it.
* π0 / π0.5: the PaliGemma / Gemma configs build offline; the tokenizer (PaliGemma's) lives on the hub, so the
  processor points at a stand-in tokenizer folder trained here. ``small`` needs widths LeRobot does not offer:
  ``tiny_pi_variants()`` adds two Gemma variants (``vla_edge_tiny_vlm``, ``vla_edge_tiny_expert``) and a small
  SigLIP while a policy is built; a checkpoint that names them loads only with that patch (``checkpoint`` applies
  it for such names). LeRobot's hard-coded 8 attention heads are kept.

Every checkpoint written here carries ``RANDOM_WEIGHTS.json`` (LeRobot ignores unknown files); the importer reads
it and labels the bundle RANDOM WEIGHTS. Shapes differ on purpose from the reference model's: several cameras,
other state/action sizes, chunk lengths that are not powers of two.

Layouts: ``"0.4"`` is what LeRobot 0.4+ writes (config.json, model.safetensors, policy_{pre,post}processor.json +
their state files). ``"0.3"`` is what LeRobot 0.3.x wrote: config.json with only 0.3.3's fields and the
normalisation statistics as buffers inside model.safetensors (``normalize_inputs.buffer_<key>.<stat>``,
``normalize_targets...``, ``unnormalize_outputs...``, keys with '.' → '_'), as read from LeRobot 0.3.3's
``policies/normalize.py`` (``create_stats_buffers``) and ``configs/policies.py``.

    python -m models.lerobot.fixtures --type smolvla --size small --layout 0.4 --out /tmp/ckpt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

RANDOM_WEIGHTS_FILE = "RANDOM_WEIGHTS.json"
LABEL = "RANDOM WEIGHTS: a real architecture with untrained weights; its actions mean nothing"
POLICY_TYPES = ("act", "diffusion", "smolvla", "pi0", "pi05")
TINY_VLM, TINY_EXPERT = "vla_edge_tiny_vlm", "vla_edge_tiny_expert"

# Fields of each policy's config.json as LeRobot 0.3.3 wrote them (draccus dumps every dataclass field: the base
# PreTrainedConfig's, then the policy's). Read from lerobot-0.3.3's configs/policies.py and
# policies/<type>/configuration_<type>.py; later versions only added fields.
LEROBOT_033_BASE_FIELDS = ("n_obs_steps", "normalization_mapping", "input_features", "output_features", "device",
                           "use_amp", "push_to_hub", "repo_id", "private", "tags", "license")
LEROBOT_033_FIELDS = {
    "act": ("chunk_size", "n_action_steps", "vision_backbone", "pretrained_backbone_weights",
            "replace_final_stride_with_dilation", "pre_norm", "dim_model", "n_heads", "dim_feedforward",
            "feedforward_activation", "n_encoder_layers", "n_decoder_layers", "use_vae", "latent_dim",
            "n_vae_encoder_layers", "temporal_ensemble_coeff", "dropout", "kl_weight", "optimizer_lr",
            "optimizer_weight_decay", "optimizer_lr_backbone"),
    "diffusion": ("horizon", "n_action_steps", "drop_n_last_frames", "vision_backbone", "crop_shape",
                  "crop_is_random", "pretrained_backbone_weights", "use_group_norm", "spatial_softmax_num_keypoints",
                  "use_separate_rgb_encoder_per_camera", "down_dims", "kernel_size", "n_groups",
                  "diffusion_step_embed_dim", "use_film_scale_modulation", "noise_scheduler_type",
                  "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "clip_sample",
                  "clip_sample_range", "num_inference_steps", "do_mask_loss_for_padding", "optimizer_lr",
                  "optimizer_betas", "optimizer_eps", "optimizer_weight_decay", "scheduler_name",
                  "scheduler_warmup_steps"),
    "smolvla": ("chunk_size", "n_action_steps", "max_state_dim", "max_action_dim", "resize_imgs_with_padding",
                "empty_cameras", "adapt_to_pi_aloha", "use_delta_joint_actions_aloha", "tokenizer_max_length",
                "num_steps", "use_cache", "freeze_vision_encoder", "train_expert_only", "train_state_proj",
                "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay",
                "optimizer_grad_clip_norm", "scheduler_warmup_steps", "scheduler_decay_steps", "scheduler_decay_lr",
                "vlm_model_name", "load_vlm_weights", "add_image_special_tokens", "attention_mode", "prefix_length",
                "pad_language_to", "num_expert_layers", "num_vlm_layers", "self_attn_every_n_layers",
                "expert_width_multiplier", "min_period", "max_period"),
}
BUFFER_MODULES = ("normalize_inputs", "normalize_targets", "unnormalize_outputs")


# ---- shapes ---
# State no longer than the action vector: the daemon measures the state from what the controller reports (the
# action-space joints, by name or index), so every state value must have one.------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """Observation and action shapes of a fixture: camera name → (C, H, W), state and action sizes."""

    cameras: dict[str, tuple[int, int, int]]
    state_dim: int
    action_dim: int
    config: dict[str, Any] = field(default_factory=dict)  # policy config overrides


SHAPES: dict[tuple[str, str], Shape] = {
    # small: seconds to build and export; shapes unlike the reference model's (one 96x96 view, 3 state, 4 actions,
    # horizon 8): several cameras, non-square frames, chunk lengths that are not powers of two.
    ("act", "small"): Shape({"top": (3, 72, 88), "wrist": (3, 72, 88)}, 5, 7, dict(
        chunk_size=37, n_action_steps=37, dim_model=64, n_heads=4, dim_feedforward=128, n_encoder_layers=2,
        n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=16)),
    ("act", "real"): Shape({"top": (3, 480, 640)}, 14, 14, dict(chunk_size=100, n_action_steps=100)),
    ("diffusion", "small"): Shape({"top": (3, 64, 80), "side": (3, 64, 80)}, 4, 5, dict(
        horizon=12, n_action_steps=6, n_obs_steps=2, crop_shape=(56, 72), down_dims=(32, 64), kernel_size=3,
        n_groups=4, diffusion_step_embed_dim=32, spatial_softmax_num_keypoints=8, num_train_timesteps=20)),
    ("diffusion", "real"): Shape({"top": (3, 96, 96)}, 2, 2, dict(crop_shape=(84, 84))),
    ("smolvla", "small"): Shape({"top": (3, 48, 64), "wrist": (3, 48, 64)}, 5, 6, dict(
        chunk_size=30, n_action_steps=30, num_vlm_layers=4, resize_imgs_with_padding=(64, 64), num_steps=4)),
    ("smolvla", "real"): Shape({"top": (3, 480, 640), "wrist": (3, 480, 640)}, 6, 6, dict(
        chunk_size=50, n_action_steps=50)),
    ("pi0", "small"): Shape({"base": (3, 60, 80), "wrist": (3, 60, 80)}, 6, 7, dict(
        chunk_size=25, n_action_steps=25, num_inference_steps=3, image_resolution=(56, 56),
        paligemma_variant=TINY_VLM, action_expert_variant=TINY_EXPERT, tokenizer_max_length=20)),
    ("pi0", "real"): Shape({"base": (3, 224, 224)}, 8, 7, dict(chunk_size=50, n_action_steps=50)),
    ("pi05", "small"): Shape({"base": (3, 60, 80), "wrist": (3, 60, 80)}, 6, 7, dict(
        chunk_size=25, n_action_steps=25, num_inference_steps=3, image_resolution=(56, 56),
        paligemma_variant=TINY_VLM, action_expert_variant=TINY_EXPERT, tokenizer_max_length=48)),
    ("pi05", "real"): Shape({"base": (3, 224, 224)}, 8, 7, dict(chunk_size=50, n_action_steps=50)),
}


# ---- tiny π0 variants -----------------------------------------------------------------------------------------
# (width, depth, mlp_dim, num_heads, num_kv_heads, head_dim); 8 heads: LeRobot's layer code hard-codes 8.
_TINY_GEMMA = {TINY_VLM: (128, 2, 256, 8, 1, 16), TINY_EXPERT: (64, 2, 128, 8, 1, 16)}
_TINY_SIGLIP = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96)


@contextlib.contextmanager
def tiny_pi_variants() -> Iterator[None]:
    """While active, π0 / π0.5 accept the two tiny Gemma variants, and a PaliGemma whose text width is the tiny
    VLM's gets a small SigLIP (LeRobot fixes SigLIP-So400m's intermediate size and a 2048 projection)."""
    from lerobot.policies.pi0 import configuration_pi0, modeling_pi0
    from lerobot.policies.pi05 import configuration_pi05, modeling_pi05

    saved_checks = []
    for config_class in (configuration_pi0.PI0Config, configuration_pi05.PI05Config):
        original_check = config_class.__post_init__

        def check(self, _original=original_check):  # noqa: ANN001, ANN202 - the config validates variant names
            names = self.paligemma_variant, self.action_expert_variant
            if self.paligemma_variant in _TINY_GEMMA:
                self.paligemma_variant = "gemma_2b"
            if self.action_expert_variant in _TINY_GEMMA:
                self.action_expert_variant = "gemma_300m"
            _original(self)
            self.paligemma_variant, self.action_expert_variant = names

        saved_checks.append((config_class, original_check))
        config_class.__post_init__ = check
    saved = []
    for module in (modeling_pi0, modeling_pi05):
        original_config, original_model = module.get_gemma_config, module.PaliGemmaForConditionalGenerationWithPiGemma

        def get_config(variant: str, _original=original_config, _module=module):  # noqa: ANN202
            if variant in _TINY_GEMMA:
                width, depth, mlp, heads, kv, head_dim = _TINY_GEMMA[variant]
                return _module.GemmaConfig(width=width, depth=depth, mlp_dim=mlp, num_heads=heads,
                                           num_kv_heads=kv, head_dim=head_dim)
            return _original(variant)

        def build_paligemma(config, _original=original_model):  # noqa: ANN001, ANN202
            if config.text_config.hidden_size == _TINY_GEMMA[TINY_VLM][0]:
                for key, value in _TINY_SIGLIP.items():
                    setattr(config.vision_config, key, value)
                config.vision_config.projection_dim = config.text_config.hidden_size
            return _original(config=config)

        saved.append((module, original_config, original_model))
        module.get_gemma_config = get_config
        module.PaliGemmaForConditionalGenerationWithPiGemma = build_paligemma
    try:
        yield
    finally:
        for config_class, original_check in saved_checks:
            config_class.__post_init__ = original_check
        for module, original_config, original_model in saved:
            module.get_gemma_config = original_config
            module.PaliGemmaForConditionalGenerationWithPiGemma = original_model


def uses_tiny_variants(config: Any) -> bool:
    return getattr(config, "paligemma_variant", None) in _TINY_GEMMA or \
        getattr(config, "action_expert_variant", None) in _TINY_GEMMA


# ---- stand-in tokenizer and SmolVLM folder ---------------------------------------------------------------------
_WORDS = ("put pick place the a an red green blue yellow orange black white block cube cup bowl bin box plate "
          "left right top bottom middle into onto in on near far open close drawer door gripper arm move grasp "
          "lift push pull slide towards away from and then it them small large first second".split())
_SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>", "<fake_token_around_image>", "<global-img>", "<image>",
            "<end_of_utterance>")
STAND_IN_ORIGIN = ("STAND-IN tokenizer trained here (byte-level BPE, vocabulary 512, on generated robot "
                   "instructions) because the checkpoint's real tokenizer lives on a model hub this machine cannot "
                   "reach")


def train_stand_in_tokenizer(vocab_size: int = 512, seed: int = 0):  # noqa: ANN201 - a tokenizers.Tokenizer
    """A byte-level BPE tokenizer trained on generated instructions; BOS prepended like PaliGemma's / SmolVLM's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    text = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14))) for _ in range(4000)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(text, trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    return tokenizer


def _fast_tokenizer(tokenizer):  # noqa: ANN001, ANN202
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                              "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"},
    )


def write_tokenizer_folder(directory: Path) -> Path:
    """A folder ``AutoTokenizer.from_pretrained`` loads offline: the stand-in tokenizer (π0's processor)."""
    _fast_tokenizer(train_stand_in_tokenizer()).save_pretrained(directory)
    (directory / "STAND_IN_TOKENIZER.txt").write_text(STAND_IN_ORIGIN + "\n")
    return directory


# SmolVLM2-500M-Video-Instruct's shape (hand-written: its config.json lives on the hub).
_SMOLVLM_REAL = dict(
    text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
              num_key_value_heads=5, head_dim=64, rope_theta=100000.0, max_position_embeddings=8192),
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16,
                image_size=512),
    scale_factor=4,
)
_SMOLVLM_SMALL = dict(
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, rope_theta=100000.0, max_position_embeddings=2048),
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
                image_size=64),
    scale_factor=2,
)


def write_smolvlm_folder(directory: Path, size: str) -> Path:
    """A local 'model id' for SmolVLA's ``vlm_model_name``: hand-written SmolVLM config + processor with the
    stand-in tokenizer (no weights: SmolVLA builds its VLM from the config when load_vlm_weights is false)."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    shape = _SMOLVLM_REAL if size == "real" else _SMOLVLM_SMALL
    tokenizer = _fast_tokenizer(train_stand_in_tokenizer())
    vision = dict(shape["vision"])
    tokens_per_image = (vision["image_size"] // vision["patch_size"]) ** 2 // shape["scale_factor"] ** 2
    processor = SmolVLMProcessor(image_processor=SmolVLMImageProcessor(), tokenizer=tokenizer,
                                 video_processor=SmolVLMVideoProcessor(), image_seq_len=tokens_per_image)
    processor.save_pretrained(directory)
    # real size: SmolVLM2's vocabulary (49 280) so the embedding has its real size; the stand-in tokenizer uses
    # the first 512 ids
    vocab = max(len(tokenizer), 49280) if size == "real" else len(tokenizer)
    config = SmolVLMConfig(
        text_config=dict(model_type="llama", vocab_size=vocab, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         **shape["text"]),
        vision_config=vision, scale_factor=shape["scale_factor"],
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    config.save_pretrained(directory)
    (directory / "STAND_IN_TOKENIZER.txt").write_text(
        STAND_IN_ORIGIN + "\nSmolVLM config hand-written (" + ("SmolVLM2-500M's shape" if size == "real" else "small")
        + "); no VLM weights (random).\n")
    return directory


# ---- building -------------------------------------------------------------------------------------------------
def _features(shape: Shape) -> tuple[dict, dict]:
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (shape.state_dim,))}
    for name, chw in shape.cameras.items():
        inputs[f"observation.images.{name}"] = PolicyFeature(FeatureType.VISUAL, chw)
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (shape.action_dim,))}
    return inputs, outputs


def random_stats(shape: Shape, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Dataset statistics of plausible scale (what lerobot-train would compute from a dataset)."""
    g = torch.Generator().manual_seed(seed)

    def vector(n: int) -> dict[str, torch.Tensor]:
        mean = torch.randn(n, generator=g) * 0.5
        std = torch.rand(n, generator=g) * 0.9 + 0.1
        low, high = mean - 2.5 * std, mean + 2.5 * std
        return {"mean": mean, "std": std, "min": low, "max": high,
                "q01": mean - 2.3 * std, "q99": mean + 2.3 * std, "q10": mean - 1.3 * std, "q90": mean + 1.3 * std}

    stats = {"observation.state": vector(shape.state_dim), "action": vector(shape.action_dim)}
    for name in shape.cameras:
        mean = torch.rand(3, 1, 1, generator=g) * 0.2 + 0.4
        std = torch.rand(3, 1, 1, generator=g) * 0.1 + 0.2
        stats[f"observation.images.{name}"] = {"mean": mean, "std": std, "min": torch.zeros(3, 1, 1),
                                               "max": torch.ones(3, 1, 1)}
    return stats


def make_config(policy_type: str, size: str, support_dir: Path) -> Any:
    """The policy's LeRobot config at this size; SmolVLA / π0 support folders (VLM, tokenizer) go to support_dir."""
    shape = SHAPES[(policy_type, size)]
    inputs, outputs = _features(shape)
    kwargs: dict[str, Any] = dict(input_features=inputs, output_features=outputs, device="cpu", **shape.config)
    if policy_type == "act":
        from lerobot.policies.act.configuration_act import ACTConfig

        return ACTConfig(pretrained_backbone_weights=None, **kwargs)
    if policy_type == "diffusion":
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        return DiffusionConfig(pretrained_backbone_weights=None, **kwargs)
    if policy_type == "smolvla":
        from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

        vlm = write_smolvlm_folder(support_dir / "smolvlm", size)
        return SmolVLAConfig(vlm_model_name=str(vlm), load_vlm_weights=False, **kwargs)
    if policy_type in ("pi0", "pi05"):
        if policy_type == "pi0":
            from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        else:
            from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        with tiny_pi_variants() if kwargs.get("paligemma_variant") in _TINY_GEMMA else contextlib.nullcontext():
            return Config(**kwargs)
    raise ValueError(f"unknown policy type {policy_type!r}; choose from {', '.join(POLICY_TYPES)}")


def build_policy(policy_type: str, size: str, support_dir: Path, seed: int = 0) -> tuple[Any, dict]:
    """(policy with random weights, dataset statistics)."""
    from lerobot.policies.factory import get_policy_class

    config = make_config(policy_type, size, support_dir)
    torch.manual_seed(seed)
    with tiny_pi_variants() if uses_tiny_variants(config) else contextlib.nullcontext():
        policy = get_policy_class(policy_type)(config)
    policy.eval()
    return policy, random_stats(SHAPES[(policy_type, size)], seed + 1)


@contextlib.contextmanager
def tokenizer_redirect(folder: Path) -> Iterator[None]:
    """While active, LeRobot's TokenizerProcessorStep loads ``folder`` whatever tokenizer name it was given (π0's
    processor factory names PaliGemma's hub tokenizer, which cannot be downloaded here)."""
    from lerobot.processor import tokenizer_processor

    original = tokenizer_processor.AutoTokenizer

    class _Redirect:
        @staticmethod
        def from_pretrained(_name: str, *args: Any, **kwargs: Any) -> Any:
            return original.from_pretrained(str(folder), *args, **kwargs)

    tokenizer_processor.AutoTokenizer = _Redirect
    try:
        yield
    finally:
        tokenizer_processor.AutoTokenizer = original


def _processors(policy: Any, stats: dict, support_dir: Path) -> tuple[Any, Any]:
    from lerobot.policies.factory import make_pre_post_processors

    if policy.config.type not in ("pi0", "pi05"):
        return make_pre_post_processors(policy.config, dataset_stats=stats)
    # PaliGemma's tokenizer is on the hub: the processor gets the stand-in folder, and its saved config names it
    from lerobot.processor import TokenizerProcessorStep

    folder = write_tokenizer_folder(support_dir / "tokenizer")
    with tokenizer_redirect(folder):
        pre, post = make_pre_post_processors(policy.config, dataset_stats=stats)
    for step in pre.steps:
        if isinstance(step, TokenizerProcessorStep):
            step.tokenizer_name = str(folder)
    return pre, post


# ---- saving ---------------------------------------------------------------------------------------------------
def _label(policy_type: str, size: str, layout: str, support_dir: Path) -> dict[str, Any]:
    return {"random_weights": True, "label": LABEL, "built_by": "models.lerobot.fixtures", "policy_type": policy_type,
            "size": size, "layout": layout, "support_dir": str(support_dir)}


def save_pretrained(policy: Any, stats: dict, directory: Path, layout: str, support_dir: Path,
                    size: str = "small") -> Path:
    """Write ``directory`` as lerobot-train's ``pretrained_model`` in ``layout`` "0.4" or "0.3"."""
    directory.mkdir(parents=True, exist_ok=True)
    policy_type = policy.config.type
    if layout == "0.4":
        policy.save_pretrained(directory)
        pre, post = _processors(policy, stats, support_dir)
        pre.save_pretrained(directory)
        post.save_pretrained(directory)
    elif layout == "0.3":
        if policy_type not in LEROBOT_033_FIELDS:
            raise ValueError(f"LeRobot 0.3.x {policy_type} checkpoints are not written here: 0.3.x's π0 was a "
                             "different implementation, which LeRobot 0.4+ itself does not load")
        _save_033(policy, stats, directory)
    else:
        raise ValueError(f"layout must be '0.3' or '0.4', got {layout!r}")
    (directory / RANDOM_WEIGHTS_FILE).write_text(json.dumps(_label(policy_type, size, layout, support_dir), indent=1))
    return directory


def _save_033(policy: Any, stats: dict, directory: Path) -> None:
    from safetensors.torch import save_file

    policy.config._save_pretrained(directory)  # noqa: SLF001 - LeRobot's own writer, then trimmed to 0.3.3's fields
    path = directory / "config.json"
    config = json.loads(path.read_text())
    keep = {"type", *LEROBOT_033_BASE_FIELDS, *LEROBOT_033_FIELDS[policy.config.type]}
    path.write_text(json.dumps({k: v for k, v in config.items() if k in keep}, indent=4))
    tensors = {k: v.detach().clone().contiguous() for k, v in policy.state_dict().items()}
    mapping = {m.value if hasattr(m, "value") else str(m): (n.value if hasattr(n, "value") else str(n))
               for m, n in policy.config.normalization_mapping.items()}
    wanted = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max")}
    features = {"normalize_inputs": policy.config.input_features, "normalize_targets": policy.config.output_features,
                "unnormalize_outputs": policy.config.output_features}
    for module, feats in features.items():
        for key, feature in feats.items():
            mode = mapping.get(feature.type.value if hasattr(feature.type, "value") else str(feature.type), "IDENTITY")
            for stat in wanted.get(mode, ()):
                value = stats[key][stat].to(torch.float32)
                if feature.type.value == "VISUAL":
                    value = value.reshape(3, 1, 1)
                tensors[f"{module}.buffer_{key.replace('.', '_')}.{stat}"] = value.clone().contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def write_fixture(policy_type: str, size: str, layout: str, root: Path, seed: int = 0, step: int = 2000) -> Path:
    """Build and save one fixture as ``root/checkpoints/<step>/pretrained_model``; returns that folder.
    Support folders (SmolVLM config, stand-in tokenizer) go to ``root/support`` and stay with it."""
    support = root / "support"
    support.mkdir(parents=True, exist_ok=True)
    policy, stats = build_policy(policy_type, size, support, seed)
    return save_pretrained(policy, stats, root / "checkpoints" / f"{step:06d}" / "pretrained_model", layout, support,
                           size)


def random_observation(shape: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frames with structure (gradients + blobs, so convolutions see edges) and a state over the data's range."""
    out: dict[str, np.ndarray] = {}
    for name, (_, h, w) in shape.cameras.items():
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        frame = np.empty((h, w, 3), dtype=np.float32)
        for c in range(3):
            fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
            frame[..., c] = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + phase)
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.3) * min(h, w)
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 1, size=3)
        out[name] = np.clip(frame * 255 + rng.normal(0, 8, frame.shape), 0, 255).astype(np.uint8)
    return out


def write_observation(path: Path, shape: Shape, seed: int) -> Path:
    """One observation as LeRobot's robot loop would hand it over: ``frame:<feature key>`` uint8 H×W×3 per camera,
    ``state`` float32 (the dataset's middle), ``task`` (a unicode array: np.load needs no pickle)."""
    rng = np.random.default_rng(seed)
    frames = random_observation(shape, rng)
    arrays = {f"frame:observation.images.{name}": frame for name, frame in frames.items()}
    arrays["state"] = rng.uniform(-1, 1, shape.state_dim).astype(np.float32)
    arrays["task"] = np.array("pick up the red block and put it in the left bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.lerobot.fixtures", description=__doc__.splitlines()[0])
    parser.add_argument("--type", required=True, help=f"one or more of {', '.join(POLICY_TYPES)}, comma-separated")
    parser.add_argument("--size", choices=("small", "real"), default="small")
    parser.add_argument("--layout", default="0.4", help="0.3, 0.4 or both (comma-separated)")
    parser.add_argument("--out", type=Path, default=None,
                        help="training output folder (checkpoints/ goes inside); with several types or layouts, "
                        "one sub-folder <type>-<layout> each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observation", type=Path, default=None,
                        help="instead: write one observation of --type/--size (frames by LeRobot key, state, task) "
                        "as a .npz (no pickle) for the benchmark's workers")
    args = parser.parse_args(argv)
    if args.observation is not None:
        write_observation(args.observation, SHAPES[(args.type, args.size)], args.seed)
        print(json.dumps({"observation": str(args.observation)}))
        return 0
    if args.out is None:
        parser.error("--out is required (unless --observation)")
    types = [t for t in args.type.split(",") if t]
    layouts = [x for x in args.layout.split(",") if x]
    bad = [t for t in types if t not in POLICY_TYPES] + [x for x in layouts if x not in ("0.3", "0.4")]
    if bad:
        parser.error(f"unknown type or layout: {', '.join(bad)}")
    made = {}
    for policy_type in types:
        for layout in layouts:
            if layout == "0.3" and policy_type not in LEROBOT_033_FIELDS:
                continue
            root = args.out if len(types) * len(layouts) == 1 else args.out / f"{policy_type}-{layout}"
            made[f"{policy_type}-{layout}"] = str(write_fixture(policy_type, args.size, layout, root, args.seed))
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
