"""ACT: one encode graph (ResNet-18 per camera → transformer encoder → one-pass decoder → action head), run once
per chunk; sampler ``single_pass``.

At inference LeRobot's ACT uses a zero latent (no VAE encoder), so the chunk is a deterministic function of the
observation: K = 1 and the ``spread`` confidence signal does not apply. The graph wraps LeRobot's own
``ACT.forward`` (``policy.model``) unchanged; images arrive normalised by the runtime (the dataset's per-camera
mean/std), the state normalised (mean/std). Both exporters work (parity ≤ 1e-6 here); dynamo is used.
An environment-state input is accepted when it is the instruction's words as vla-edge's recorder writes them
(``--dataset``: `models.lerobot.env_words`): a second graph, ``instruction_words`` (role instruction), computes it
from the instruction once per text. Any other environment state is refused (the runtime has no source for it), and
so is temporal ensembling (the runtime executes whole chunks; LeRobot's temporal ensembling re-plans every step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.lerobot.plan import ExportPlan, GraphPlan, InputDecl, TensorDecl
from models.lerobot.sections import (
    action_space,
    names,
    norm_mode,
    normalisation,
    pixel_camera,
)


class ExportRefused(Exception):
    """This checkpoint uses a feature the runtime cannot run; the message says which and what to do."""


def _graph_module(policy: Any, image_keys: list[str], has_state: bool, has_env: bool = False) -> Any:
    import torch
    from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

    class ACTGraph(torch.nn.Module):
        """(state, environment_state, image_<view>...) → normalised action chunk, through LeRobot's ACT.forward."""

        def __init__(self) -> None:
            super().__init__()
            self.model = policy.model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            batch: dict[str, Any] = {}
            images = list(inputs)
            if has_state:
                batch[OBS_STATE] = images.pop(0)
            if has_env:
                batch[OBS_ENV_STATE] = images.pop(0)
            batch[OBS_IMAGES] = images
            return self.model(batch)[0]

    return ACTGraph().eval()


def plan(ck: Any, options: Any, batch: dict[str, Any]) -> ExportPlan:
    """``batch``: one observation through LeRobot's preprocessor (normalised, batch 1)."""
    cfg = ck.config
    words = None
    if cfg.env_state_feature:
        from models.lerobot import env_words

        try:
            words = env_words.check(ck.env_words, cfg.env_state_feature.shape[0])
        except env_words.EnvWordsError as exc:
            raise ExportRefused(f"ACT with an environment-state input: {exc}") from None
    if cfg.temporal_ensemble_coeff is not None:
        raise ExportRefused("ACT with temporal_ensemble_coeff set: the runtime executes whole chunks and does not "
                            "re-plan every step; import a config with temporal_ensemble_coeff=null")
    image_keys = list(cfg.image_features)
    if not image_keys:
        raise ExportRefused("ACT without a camera: vla-edge bundles need at least one camera view")
    has_state = cfg.robot_state_feature is not None
    action_dim = cfg.action_feature.shape[0]
    visual_mode = norm_mode(cfg, "VISUAL")
    inputs: list[InputDecl] = []
    sources: dict[str, np.ndarray] = {}
    if has_state:
        s = cfg.robot_state_feature.shape[0]
        inputs.append(InputDecl("state", "float32", [1, s], source="observation.state"))
        sources["observation.state"] = batch["observation.state"].numpy().astype(np.float32)
    graphs: list[GraphPlan] = []
    if words is not None:
        from models.lerobot import env_words

        d = cfg.env_state_feature.shape[0]
        tokens = env_words.example_tokens(words, words.tasks[0])
        graphs.append(GraphPlan(
            name=env_words.GRAPH, role="instruction", purpose="the instruction's words as the environment state",
            build=lambda: env_words.graph_module(words, cfg, ck.stats.get(env_words.FEATURE)),
            inputs=[InputDecl("tokens", "int64", [1, "words"], source="language.tokens")],
            outputs=[TensorDecl(env_words.OUTPUT, "float32", [1, d])], exporter="dynamo", int8_candidates=["matmul"],
        ))
        sources["language.tokens"] = tokens
        inputs.append(InputDecl("environment_state", "float32", [1, d],
                                source=f"{env_words.GRAPH}.{env_words.OUTPUT}"))
    cameras = []
    for key in image_keys:
        c, h, w = cfg.image_features[key].shape
        cameras.append(pixel_camera(key, h, w, visual_mode, ck.stats.get(key)))
        view = cameras[-1]["name"]
        inputs.append(InputDecl(f"image_{view}", "float32", [1, c, h, w], source=f"observation.image.{view}"))
        sources[f"observation.image.{view}"] = batch[key].numpy().astype(np.float32)
    graph = GraphPlan(
        name="policy", role="encode", build=lambda: _graph_module(ck.policy, image_keys, has_state, words is not None),
        inputs=inputs, outputs=[TensorDecl("actions", "float32", [1, cfg.chunk_size, action_dim])],
        exporter="dynamo", int8_candidates=["matmul", "matmul+gemm", "matmul+gemm+conv"],
    )
    state_dim = cfg.robot_state_feature.shape[0] if has_state else 0
    state_names = names(options.state_names, state_dim, "state", "state") if has_state else ["none"]
    action_names = names(options.action_names, action_dim, "action", "action")
    sections = {
        "observation": {
            "cameras": cameras,
            "state": {"names": state_names,
                      "normalisation": normalisation(norm_mode(cfg, "STATE"), ck.stats.get("observation.state"))
                      if has_state else {"mode": "identity"}},
            "history": 1,
        },
        "language": {"tokenizer": {"kind": "words",
                                   "vocabulary": words.vocabulary if words is not None else ["<pad>", "task"]}},
        "action": {"normalisation": normalisation(norm_mode(cfg, "ACTION"), ck.stats.get("action")),
                   "model_horizon": cfg.chunk_size, "execute_start": 0, "execute_length": cfg.n_action_steps},
        "sampler": {"kind": "single_pass", "output": "policy.actions"},
        "action_space": action_space(ck.stats["action"], action_names),
    }
    notes = ["ACT: one graph around LeRobot's ACT.forward (zero latent at inference: deterministic, K = 1); "
             "exported with torch.export (dynamo); no graph fix needed"]
    if words is not None:
        notes.append(f"environment state = the instruction's words {words.words} (vla-edge recorder."
                     "instruction_words), computed by the instruction graph instruction_words")
    return ExportPlan(policy_type="act", graphs=[*graphs, graph], sections=sections, example_sources=sources, notes=notes,
                      step_batch=1)
