"""What a policy's export module hands the importer: its graphs (torch modules at graph boundaries, with the
schema-2 contract of each input and output) and the manifest sections that describe how to run them.

Graphs are listed in run order. Each graph's example inputs are computed from a real observation put through
LeRobot's own preprocessing and from the outputs of the graphs before it, so every graph is exported and checked
on realistic values, and a step graph on a batch of 2 samples (the K axis is dynamic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dtype: str  # schema-2 dtype name
    shape: list[int | str]
    batch_axis: int | None = 0

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "batch_axis": self.batch_axis}


@dataclass(frozen=True)
class InputDecl(TensorDecl):
    source: str = ""
    share: str = "repeat"

    def manifest(self) -> dict[str, Any]:
        return {**super().manifest(), "source": self.source, "share": self.share}


@dataclass
class GraphPlan:
    name: str
    role: str  # instruction | encode | step | auxiliary
    build: Callable[[], Any]  # → torch.nn.Module (built lazily: a π0 block exists only while it is exported)
    inputs: list[InputDecl]
    outputs: list[TensorDecl]
    exporter: str = "dynamo"
    fixes: list[str] = field(default_factory=list)
    int8_candidates: list[str] | None = None
    purpose: str = ""

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for decl in [*self.inputs, *self.outputs]:
            named = {i: d for i, d in enumerate(decl.shape) if isinstance(d, str)}
            if named:
                axes[decl.name] = named
        return axes

    def manifest(self) -> dict[str, Any]:
        return {"role": self.role, "purpose": self.purpose, "inputs": [i.manifest() for i in self.inputs],
                "outputs": [o.manifest() for o in self.outputs]}


@dataclass
class ExportPlan:
    policy_type: str
    graphs: list[GraphPlan]
    sections: dict[str, Any]  # observation, language, action, sampler, step_end, action_space (manifest dicts)
    example_sources: dict[str, np.ndarray]  # runtime source → value (batch 1) for one observation
    notes: list[str] = field(default_factory=list)  # export fixes and decisions, for the manifest and the report
    tokenizer_json: bytes | None = None  # the tokenizer.json to ship, when the policy reads language
    step_batch: int = 2  # K of the step graphs' example inputs

    def graph(self, name: str) -> GraphPlan:
        for graph in self.graphs:
            if graph.name == name:
                return graph
        raise KeyError(name)


def numpy_dtype(name: str) -> Any:
    return {"float32": np.float32, "int64": np.int64, "bool": np.bool_, "uint8": np.uint8, "int32": np.int32,
            "float16": np.float16}[name]
