"""Schema 2: the committed schema-1 reference upgrades to it, and mistakes in the dataflow are refused by name."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from vla_edge.bundle import load_bundle
from vla_edge.bundle_schema import BundleManifestV2, upgrade_v1
from vla_edge.paths import REFERENCE_BUNDLE_DIR


@pytest.fixture(scope="module")
def upgraded() -> dict:
    manifest = upgrade_v1(load_bundle(REFERENCE_BUNDLE_DIR, verify=False).manifest, ["gripper_x", "gripper_y", "grip"])
    return json.loads(manifest.model_dump_json())


def _mutated(data: dict, edit) -> dict:  # noqa: ANN001
    copy = json.loads(json.dumps(data))
    edit(copy)
    return copy


def test_reference_upgrades_and_round_trips(upgraded: dict) -> None:
    m = BundleManifestV2.model_validate(upgraded)
    assert m.schema_version == 2
    assert (m.horizon, m.action_dim, m.state_dim) == (8, 4, 3)
    assert m.state_names == ["gripper_x", "gripper_y", "grip"]
    assert m.action_names == ["target_x", "target_y", "grip", "done"]
    assert m.step_end.done_action == "done"
    assert m.graphs_with_role("instruction") == ["instruction_encoder"]
    assert m.graphs_with_role("step") == ["denoiser"]
    assert m.sampler.kind == "flow_matching_euler" and m.sampler.velocity == "action_minus_noise"
    assert BundleManifestV2.model_validate_json(m.model_dump_json()) == m


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["graphs"]["denoiser"]["inputs"][2].update(source="nowhere.context"),
         "source 'nowhere.context' is neither a runtime source nor an output of an earlier graph"),
        (lambda d: d["graphs"]["observation_encoder"]["inputs"][0].update(source="observation.image.wrist"),
         "no camera view 'wrist'"),
        (lambda d: d["graphs"]["instruction_encoder"]["inputs"][0].update(source="observation.state"),
         "an instruction graph may read language.* only"),
        (lambda d: d["graphs"]["observation_encoder"]["inputs"][1].update(source="sampler.x"),
         "sampler.x feeds step graphs only"),
        (lambda d: d["graphs"]["denoiser"]["inputs"][2].update(dtype="float16"),
         "observation_encoder.context is float32, the input is float16"),
        (lambda d: d["sampler"].update(output="denoiser.speed"), "is not an output of any graph"),
        (lambda d: d["step_end"].update(done_action="finished"), "is not an action name"),
        (lambda d: d["action"].update(execute_start=4), "exceeds model_horizon 8"),
        (lambda d: d["variants"]["int8"]["graphs"].pop("denoiser"), "variant 'int8' has files for graphs"),
        (lambda d: d["variants"]["fp32"]["graphs"]["denoiser"].update(file="fp32/missing.onnx"),
         "'fp32/missing.onnx' is not listed in files"),
        (lambda d: d.update(step_end={}), "step_end needs at least one rule"),
        (lambda d: d["sampler"].update(time_end=0.0), "time_start and time_end must differ"),
        (lambda d: d["observation"]["cameras"][0].update(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]),
         "mean/std and value_range apply to float32 images only"),
        (lambda d: d["action"]["normalisation"].update(low=[0.0]), "min_max needs low and high of the same length"),
        (lambda d: d["graphs"].update({"bad.name": d["graphs"]["denoiser"]}), "graph name 'bad.name'"),
    ],
)
def test_mistakes_are_refused_by_name(upgraded: dict, edit, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ValidationError) as info:
        BundleManifestV2.model_validate(_mutated(upgraded, edit))
    assert message in str(info.value)


def test_later_graph_cannot_feed_an_earlier_role(upgraded: dict) -> None:
    def edit(d: dict) -> None:
        d["graphs"]["observation_encoder"]["inputs"][2]["source"] = "denoiser.velocity"

    with pytest.raises(ValidationError, match="denoiser.velocity is computed after this graph"):
        BundleManifestV2.model_validate(_mutated(upgraded, edit))


def test_ddpm_and_single_pass_samplers_validate(upgraded: dict) -> None:
    ddpm = _mutated(upgraded, lambda d: d.update(sampler={
        "kind": "ddpm", "num_train_timesteps": 100, "num_inference_steps": 100, "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "epsilon", "output": "denoiser.velocity"}))
    assert BundleManifestV2.model_validate(ddpm).sampler.kind == "ddpm"
    too_many = _mutated(ddpm, lambda d: d["sampler"].update(num_inference_steps=101))
    with pytest.raises(ValidationError, match="num_inference_steps cannot exceed num_train_timesteps"):
        BundleManifestV2.model_validate(too_many)
    # single_pass provides no sampler.x / sampler.t: a graph that reads them is refused
    single = _mutated(upgraded, lambda d: d.update(sampler={"kind": "single_pass", "output": "denoiser.velocity"}))
    with pytest.raises(ValidationError, match="a single_pass sampler provides no sampler.x"):
        BundleManifestV2.model_validate(single)
