"""The automatic checkpoint verifier: a small success detector that says whether the scene is as the instructions
since the last checkpoint should have left it, so that a person is asked only when it is unsure.

It is a bundle of its own (``models/bundles/reference-verifier``, built by ``python -m models.verifier.build`` on the
reference world's rollouts): one ONNX graph and a manifest with its vocabulary and two calibrated thresholds.
Input: the camera frame before the first step of the window and the frame now, and the window's instructions;
output: P(as expected). It sees only what the robot has, never the simulator's judge.

* P > ``accept_threshold``: as expected, sure (the checkpoint passes by itself). The threshold is the conformal
  quantile of P over failed windows of held-out chains for a stated false-accept rate (``calibration``);
* P < ``reject_threshold``: not as expected, sure (the step is retried, then escalated). The threshold is the
  conformal quantile over successful windows for a stated false-reject rate;
* in between, or when it cannot judge (no frame, too many steps, an unknown word): unsure, and a person decides.

numpy + onnxruntime (+ OpenCV to resize other camera sizes); no torch at run time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vla_edge.errors import BundleError
from vla_edge.task import Verification
from vla_edge.tokenizer import UnknownWordError, WordTokenizer

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class VerifierCalibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="How the thresholds were set.")
    target_false_accept: float = Field(gt=0, lt=1)
    target_false_reject: float = Field(gt=0, lt=1)
    seed: int
    chains: int
    windows_as_expected: int
    windows_failed: int
    false_accept: float | None = Field(None, description="Measured on the calibration windows.")
    false_reject: float | None = None
    unsure: float | None = Field(None, description="Share of calibration windows between the thresholds.")


class VerifierManifest(BaseModel):
    """What a verifier bundle is: its graph (and sha256), vocabulary, input sizes and thresholds."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    kind: Literal["checkpoint_verifier"] = "checkpoint_verifier"
    name: str
    version: str
    description: str = ""
    policy: str = Field(description="The policy bundle whose rollouts it was trained and calibrated on.")
    graph: str = "verifier.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    vocabulary: list[str] = Field(min_length=2)
    image_size: int = Field(gt=0)
    max_steps: int = Field(ge=1, le=16)
    max_words: int = Field(ge=1, le=64)
    accept_threshold: float = Field(ge=0, le=1)
    reject_threshold: float = Field(ge=0, le=1)
    calibration: VerifierCalibration | None = None
    training: dict[str, float | int | str] = Field(default_factory=dict)


def read_verifier_manifest(bundle_dir: Path) -> VerifierManifest:
    path = Path(bundle_dir) / MANIFEST
    try:
        return VerifierManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"verifier bundle not found: {path} does not exist") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"verifier manifest {path} is invalid: {problems}") from None


def write_verifier_manifest(manifest: VerifierManifest, bundle_dir: Path) -> Path:
    path = Path(bundle_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def graph_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CheckpointVerifier:
    """A `vla_edge.task.SceneVerifier` on a verifier bundle. One instance is used from one thread (the task's)."""

    def __init__(self, bundle_dir: Path, threads: int = 1, *, accept_threshold: float | None = None,
                 reject_threshold: float | None = None) -> None:
        bundle_dir = Path(bundle_dir)
        self.manifest = read_verifier_manifest(bundle_dir)
        m = self.manifest
        graph = bundle_dir / m.graph
        if graph.parent != bundle_dir or graph.is_symlink():
            raise BundleError(f"verifier graph {m.graph!r} must be a plain file inside {bundle_dir}")
        try:
            data = graph.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read the verifier graph {graph}: {exc.strerror or exc}") from None
        if graph_sha256(data) != m.sha256:
            raise BundleError(f"verifier graph {graph} does not match the sha256 in its manifest")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:  # the session is made from the bytes that were checked, not from the path again
            self._session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise BundleError(f"cannot load the verifier graph {graph}: {exc}") from None
        self._tokenizer = WordTokenizer(m.vocabulary)
        self.accept_threshold = m.accept_threshold if accept_threshold is None else accept_threshold
        self.reject_threshold = m.reject_threshold if reject_threshold is None else reject_threshold
        if self.reject_threshold > self.accept_threshold:
            raise BundleError(f"verifier thresholds overlap: reject {self.reject_threshold:g} > accept "
                              f"{self.accept_threshold:g}")
        self.name = f"{m.name} {m.version}"

    def tokens(self, instructions: Sequence[str]) -> np.ndarray:
        """Word ids of up to ``max_steps`` instructions, (1, max_steps, max_words); raises on an unknown word."""
        m = self.manifest
        out = np.zeros((1, m.max_steps, m.max_words), dtype=np.int64)
        out[0, : len(instructions)] = self._tokenizer.encode_padded(list(instructions), m.max_words)
        return out

    def _image(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"a frame must be H×W×3 uint8, got {frame.dtype} {frame.shape}")
        size = self.manifest.image_size
        if frame.shape[:2] != (size, size):
            import cv2

            frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame)[None]

    def probability(self, instructions: Sequence[str], before: np.ndarray, after: np.ndarray) -> float:
        """P(the scene in ``after`` is as ``instructions`` should have left the scene in ``before``)."""
        (p,) = self._session.run(["p_expected"], {"before": self._image(before), "after": self._image(after),
                                                  "tokens": self.tokens(instructions)})
        return float(p[0])

    def verify(self, instructions: tuple[str, ...], before: np.ndarray | None,
               after: np.ndarray | None) -> Verification:
        if not instructions:
            return Verification(True, "nothing to verify", sure=True)
        if before is None or after is None:
            return Verification(False, "the automatic check has no frame to judge from", sure=False)
        if len(instructions) > self.manifest.max_steps:
            return Verification(False, f"the automatic check judges at most {self.manifest.max_steps} steps",
                                sure=False)
        try:
            p = self.probability(instructions, before, after)
        except (UnknownWordError, ValueError) as exc:
            return Verification(False, f"the automatic check cannot judge this: {exc}", sure=False)
        if p > self.accept_threshold:
            return Verification(True, f"as expected (P {p:.3f})", sure=True, p=p)
        if p < self.reject_threshold:
            return Verification(False, f"the scene does not look as the instructions should have left it "
                                       f"(P {p:.3f})", sure=True, p=p)
        return Verification(False, f"the automatic check is unsure (P {p:.3f})", sure=False, p=p)
