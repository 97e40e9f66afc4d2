"""Read a LeRobot ``pretrained_model`` folder, either layout, into LeRobot's own policy and processors.

Layouts (what lerobot-train writes under ``checkpoints/NNN/pretrained_model/``):

* **0.4.x+**: ``config.json``, ``model.safetensors`` (weights only), ``policy_preprocessor.json`` /
  ``policy_postprocessor.json`` and their ``*_normalizer_processor.safetensors`` / ``*_unnormalizer_*`` state
  files (the statistics). Loaded with LeRobot's ``from_pretrained`` for both.
* **0.3.x**: ``config.json`` and ``model.safetensors`` in which the statistics are buffers
  (``normalize_inputs.buffer_<key>.<stat>``, ``normalize_targets.…``, ``unnormalize_outputs.…``; the feature key
  with '.' → '_'). The buffers are taken out by matching them against the config's feature keys (LeRobot's own
  migration script guesses the key by turning every '_' into '.', which breaks names such as
  ``observation.images.wrist_cam``), the remaining weights load strictly, and the processors are built from the
  config with those statistics, as ``lerobot/processor/migrate_policy_normalization.py`` does.

Policies whose 0.3.x implementation differs from the installed LeRobot's (π0: rewritten as the openpi port in 0.4)
are refused with the reason. Every missing or unexpected weight is an error, never silently skipped.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.lerobot.fixtures import RANDOM_WEIGHTS_FILE, tiny_pi_variants, tokenizer_redirect

SUPPORTED = ("act", "diffusion", "smolvla", "pi0", "pi05")
BUFFER_MODULES = ("normalize_inputs", "normalize_targets", "unnormalize_outputs")
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"


class CheckpointError(Exception):
    """The folder is not a checkpoint this importer can read; the message says why and what to do."""


@dataclass
class Checkpoint:
    path: Path
    layout: str  # "0.3" or "0.4"
    policy_type: str
    policy: Any  # lerobot PreTrainedPolicy, eval mode, fp32, cpu
    preprocessor: Any  # PolicyProcessorPipeline (LeRobot's own)
    postprocessor: Any
    stats: dict[str, dict[str, np.ndarray]]  # feature key → stat → array (what the normaliser uses)
    random_weights: bool
    label: dict[str, Any] = field(default_factory=dict)
    tokenizer_dir: Path | None = None  # where the processor's tokenizer came from (SmolVLA / π0)
    n_parameters: int = 0
    policy_config: Any = None  # kept when the policy is released to free memory
    env_words: Any = None  # models.lerobot.env_words.DatasetWords from --dataset, when given

    @property
    def config(self) -> Any:
        return self.policy.config if self.policy is not None else self.policy_config

    def parameters(self) -> int:
        return self.n_parameters


def detect_layout(path: Path) -> tuple[str, str, dict[str, Any]]:
    """(layout, policy type, raw config.json) of a pretrained_model folder; CheckpointError otherwise."""
    config_file = path / "config.json"
    weights = path / "model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise CheckpointError(f"{path} is not a LeRobot pretrained_model folder (needs config.json and "
                              "model.safetensors; lerobot-train writes them under checkpoints/NNN/pretrained_model)")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from None
    policy_type = raw.get("type")
    if policy_type not in SUPPORTED:
        raise CheckpointError(f"{path}: policy type {policy_type!r} is not supported; supported: {', '.join(SUPPORTED)}")
    if (path / PREPROCESSOR_FILE).is_file():
        return "0.4", policy_type, raw
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        if any(key.split(".", 1)[0] in BUFFER_MODULES for key in handle.keys()):  # noqa: SIM118
            return "0.3", policy_type, raw
    raise CheckpointError(f"{path}: no normalisation statistics (neither {PREPROCESSOR_FILE} of LeRobot 0.4+ nor "
                          "the normalize_* buffers of 0.3.x in model.safetensors); was it saved by lerobot-train?")


def split_buffers(state: dict[str, Any], feature_keys: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """0.3.x: (statistics by feature key, the remaining weights). A buffer naming no known feature is an error."""
    by_mangled = {key.replace(".", "_"): key for key in feature_keys}
    stats: dict[str, dict[str, Any]] = {}
    weights: dict[str, Any] = {}
    for name, tensor in state.items():
        module, _, rest = name.partition(".")
        if module not in BUFFER_MODULES:
            weights[name] = tensor
            continue
        buffer, _, stat = rest.rpartition(".")
        mangled = buffer.removeprefix("buffer_")
        key = by_mangled.get(mangled)
        if key is None:
            raise CheckpointError(f"statistics buffer {name} names no feature of the config "
                                  f"(features: {', '.join(feature_keys)})")
        stats.setdefault(key, {})[stat] = tensor
    return stats, weights


def load_checkpoint(path: Path, vlm_dir: Path | None = None, tokenizer_dir: Path | None = None) -> Checkpoint:
    """LeRobot's policy (eval, fp32, cpu) and processors for the folder. ``vlm_dir``: SmolVLA's VLM folder when
    the checkpoint names a hub model; ``tokenizer_dir``: the tokenizer folder the processor should load instead
    of the one it names."""
    path = Path(path).expanduser().resolve()
    layout, policy_type, raw = detect_layout(path)
    label = _label(path)
    tiny = raw.get("paligemma_variant") in ("vla_edge_tiny_vlm",) or raw.get("action_expert_variant") in (
        "vla_edge_tiny_expert",)
    with tiny_pi_variants() if tiny else contextlib.nullcontext():
        config = _config(path, raw, policy_type, vlm_dir)
        if layout == "0.3":
            if policy_type in ("pi0", "pi05"):
                raise CheckpointError(
                    f"{path}: a LeRobot 0.3.x {policy_type} checkpoint. LeRobot 0.4 replaced 0.3's π0 with the "
                    "openpi port (other module names and numerics) and does not load 0.3.x π0 weights either; "
                    "fine-tune again with LeRobot >= 0.4, then import that checkpoint")
            policy, stats = _load_033(path, config, policy_type)
            pre, post = _processors_from_stats(config, stats, tokenizer_dir)
        else:
            policy = _load_04(path, config, policy_type)
            pre, post = _processors_from_folder(path, config, tokenizer_dir)
            stats = _stats_of(pre)
    policy.eval()
    policy.to("cpu")
    policy.float()
    return Checkpoint(
        path=path, layout=layout, policy_type=policy_type, policy=policy, preprocessor=pre, postprocessor=post,
        stats={k: {s: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float32)
                   for s, v in d.items()} for k, d in stats.items()},
        random_weights=bool(label.get("random_weights")), label=label,
        tokenizer_dir=_tokenizer_dir(pre), n_parameters=sum(p.numel() for p in policy.parameters()),
        policy_config=policy.config,
    )


def _label(path: Path) -> dict[str, Any]:
    marker = path / RANDOM_WEIGHTS_FILE
    if not marker.is_file():
        return {}
    try:
        return dict(json.loads(marker.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError):
        return {"random_weights": True, "label": f"{RANDOM_WEIGHTS_FILE} present (unreadable)"}


def _config(path: Path, raw: dict[str, Any], policy_type: str, vlm_dir: Path | None) -> Any:
    import lerobot.policies.factory  # noqa: F401 - registers every policy config type with draccus
    from lerobot.configs.policies import PreTrainedConfig

    try:
        config = PreTrainedConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # draccus raises several types for a config it cannot parse
        raise CheckpointError(f"{path}/config.json does not parse as a LeRobot {policy_type} config: {exc}") from None
    config.device = "cpu"
    if policy_type == "smolvla":
        if vlm_dir is not None:
            config.vlm_model_name = str(Path(vlm_dir).resolve())
        if not Path(config.vlm_model_name).is_dir():
            raise CheckpointError(
                f"SmolVLA's VLM {config.vlm_model_name!r} is a model-hub name and this machine cannot download it: "
                "pass --vlm DIR, a folder with its config.json and processor files (e.g. from a Hugging Face cache "
                "on the training machine)")
        config.load_vlm_weights = False  # the checkpoint's model.safetensors holds the VLM's weights too
    if hasattr(config, "compile_model"):
        config.compile_model = False
    if getattr(config, "dtype", None) == "bfloat16":
        # ONNX Runtime's CPU provider has no bf16 kernels for several ops (Expand(13)...): export in fp32.
        config.dtype = "float32"
    return config


def _load_04(path: Path, config: Any, policy_type: str) -> Any:
    from lerobot.policies.factory import get_policy_class

    cls = get_policy_class(policy_type)
    try:
        return cls.from_pretrained(str(path), config=config, strict=True, local_files_only=True)
    except RuntimeError as exc:  # load_state_dict's missing / unexpected keys
        raise CheckpointError(f"{path}: the weights do not fit LeRobot's {policy_type} of this config: "
                              f"{str(exc).splitlines()[0][:400]}") from None


def _load_033(path: Path, config: Any, policy_type: str) -> tuple[Any, dict[str, dict[str, Any]]]:
    from lerobot.policies.factory import get_policy_class
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    keys = [*config.input_features, *config.output_features]
    stats, weights = split_buffers(state, keys)
    policy = get_policy_class(policy_type)(config)
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: LeRobot 0.3.x weights do not fit LeRobot's {policy_type}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return policy, stats


def _tokenizer_overrides(tokenizer_dir: Path | None) -> dict[str, Any]:
    return {} if tokenizer_dir is None else {"tokenizer_processor": {"tokenizer_name": str(Path(tokenizer_dir).resolve())}}


def _processors_from_folder(path: Path, config: Any, tokenizer_dir: Path | None) -> tuple[Any, Any]:
    from lerobot.policies.factory import make_pre_post_processors

    overrides = _tokenizer_overrides(tokenizer_dir)
    if getattr(config, "type", "") == "smolvla":
        overrides.setdefault("tokenizer_processor", {}).setdefault("tokenizer_name", config.vlm_model_name)
    try:
        return make_pre_post_processors(config, pretrained_path=str(path), preprocessor_overrides=overrides)
    except OSError as exc:  # a tokenizer on the hub
        raise CheckpointError(f"{path}: the processor's tokenizer cannot be loaded here ({str(exc).splitlines()[0]}); "
                              "pass --tokenizer DIR, a folder with the tokenizer files") from None


def _processors_from_stats(config: Any, stats: dict[str, dict[str, Any]], tokenizer_dir: Path | None) -> tuple[Any, Any]:
    from lerobot.policies.factory import make_pre_post_processors

    if config.type == "smolvla":  # its tokenizer step loads vlm_model_name (a local folder by now)
        return make_pre_post_processors(config, dataset_stats=stats)
    if tokenizer_dir is not None:
        with tokenizer_redirect(Path(tokenizer_dir)):
            return make_pre_post_processors(config, dataset_stats=stats)
    return make_pre_post_processors(config, dataset_stats=stats)


def _stats_of(preprocessor: Any) -> dict[str, dict[str, Any]]:
    from lerobot.processor import NormalizerProcessorStep

    for step in preprocessor.steps:
        if isinstance(step, NormalizerProcessorStep):
            return {k: dict(v) for k, v in step._tensor_stats.items()}  # noqa: SLF001 - the statistics it applies
    return {}


def _tokenizer_dir(preprocessor: Any) -> Path | None:
    from lerobot.processor import TokenizerProcessorStep

    for step in preprocessor.steps:
        if isinstance(step, TokenizerProcessorStep) and step.tokenizer_name and Path(step.tokenizer_name).is_dir():
            return Path(step.tokenizer_name)
    return None
