"""Training-set statistics of the observation encoder's embedding, for the runtime's out-of-distribution score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from vla_edge.bundle import EmbeddingStats
from vla_edge.tokenizer import WordTokenizer

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
SHRINKAGE = 0.05  # pull the covariance a little toward its diagonal, so its inverse stays well conditioned


def embeddings(
    instruction_graph: Path,
    observation_graph: Path,
    tokenizer: WordTokenizer,
    images: np.ndarray,
    states: np.ndarray,
    instructions: list[str],
    batch: int = 64,
) -> np.ndarray:
    """(N, E) embeddings of observations through the fp32 graphs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    instruction_session = ort.InferenceSession(str(instruction_graph), options, providers=["CPUExecutionProvider"])
    observation_session = ort.InferenceSession(str(observation_graph), options, providers=["CPUExecutionProvider"])
    features = {
        text: instruction_session.run(None, {"tokens": tokenizer.encode(text)})[0][0] for text in set(instructions)
    }
    out = []
    for start in range(0, len(images), batch):
        part = slice(start, start + batch)
        feats = np.stack([features[text] for text in instructions[part]]).astype(np.float32)
        _, embedding = observation_session.run(
            ["context", "embedding"],
            {"image": images[part], "state": states[part].astype(np.float32), "instruction_features": feats},
        )
        out.append(embedding)
    return np.concatenate(out).astype(np.float64)


def mahalanobis(embedding: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = embedding - mean
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", centred, precision, centred), 0.0))


def embedding_stats(train: np.ndarray, held_out: np.ndarray) -> EmbeddingStats:
    """Mean and shrunk covariance from training embeddings; distance quantiles on held-out embeddings (what a
    threshold sees on new, in-distribution data)."""
    mean = train.mean(axis=0)
    covariance = np.cov(train, rowvar=False)
    shrunk = (1.0 - SHRINKAGE) * covariance + SHRINKAGE * np.diag(np.diag(covariance))
    shrunk += np.eye(shrunk.shape[0]) * 1e-6 * float(np.trace(shrunk)) / shrunk.shape[0]
    precision = np.linalg.inv(shrunk)
    precision = 0.5 * (precision + precision.T)
    distances = mahalanobis(held_out, mean, precision)
    return EmbeddingStats(
        dim=int(train.shape[1]),
        num_samples=int(train.shape[0]),
        mean=mean.tolist(),
        std=np.sqrt(np.diag(covariance)).tolist(),
        covariance=shrunk.tolist(),
        precision=precision.tolist(),
        shrinkage=SHRINKAGE,
        distance_quantiles={f"{q:g}": float(np.quantile(distances, q)) for q in QUANTILES},
    )
