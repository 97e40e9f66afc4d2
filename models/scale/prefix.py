"""Feeds for the scale model's ``prefill.onnx``: nothing cached, or the instruction's cached keys/values.

The prefix is [instruction | image] with block-causal attention (see ``models.scale.build``), so the first
``words`` positions of every layer's keys/values are the instruction's alone: slice them once per instruction
and pass them back as ``past_keys_<l>``/``past_values_<l>`` with no tokens, and each chunk pays only for the image.
"""

from __future__ import annotations

import numpy as np


def empty_past(layers: int, head_dim: int) -> dict[str, np.ndarray]:
    """Past keys/values of length 0: the prefill computes the whole prefix."""
    feed: dict[str, np.ndarray] = {}
    for layer in range(layers):
        feed[f"past_keys_{layer}"] = np.zeros((1, 1, head_dim, 0), dtype=np.float32)
        feed[f"past_values_{layer}"] = np.zeros((1, 1, 0, head_dim), dtype=np.float32)
    return feed


def no_tokens() -> np.ndarray:
    return np.zeros((1, 0), dtype=np.int64)


def instruction_cache(prefix_kv: dict[str, np.ndarray], layers: int, words: int) -> dict[str, np.ndarray]:
    """The instruction's keys/values (the first ``words`` prefix positions) as past inputs, copied contiguous."""
    feed: dict[str, np.ndarray] = {}
    for layer in range(layers):
        feed[f"past_keys_{layer}"] = np.ascontiguousarray(prefix_kv[f"keys_{layer}"][..., :words])
        feed[f"past_values_{layer}"] = np.ascontiguousarray(prefix_kv[f"values_{layer}"][:, :, :words])
    return feed
