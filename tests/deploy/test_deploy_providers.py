"""Execution-provider selection: order, options, fallback to CPU with a logged reason, real ORT sessions."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from vla_edge.errors import ConfigError
from vla_edge.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderOptions,
    create_session,
    select_providers,
    session_options,
)

JETSON = [TENSORRT, CUDA, CPU]


def tiny_model() -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_gpu_requests_fall_back_to_cpu_on_this_build(caplog):
    caplog.set_level(logging.INFO, logger="vla_edge.providers")
    chosen = select_providers(JETSON)  # the real ort.get_available_providers()
    if TENSORRT in ort.get_available_providers():
        pytest.skip("this machine has TensorRT")
    assert chosen == [(CPU, {})]
    # A CPU-only build (laptop, Pi) lacking the default list's GPU providers is expected: said at INFO.
    skipped = [r for r in caplog.records if getattr(r, "provider", None)]
    assert [(r.provider, r.levelno) for r in skipped] == [(TENSORRT, logging.INFO), (CUDA, logging.INFO)]
    assert "not available" in skipped[0].getMessage()


def test_an_accelerator_build_missing_a_provider_warns(caplog):
    caplog.set_level(logging.INFO, logger="vla_edge.providers")
    select_providers(JETSON, available=[CUDA, CPU])  # a GPU build without TensorRT: a partial install
    skipped = [r for r in caplog.records if getattr(r, "provider", None)]
    assert [(r.provider, r.levelno) for r in skipped] == [(TENSORRT, logging.WARNING)]


def test_jetson_build_keeps_order_and_sets_engine_cache_and_fp16(tmp_path: Path):
    cache = tmp_path / "state" / "trt-cache"
    chosen = select_providers(JETSON, available=[TENSORRT, CUDA, CPU],
                              options=ProviderOptions(trt_cache_dir=cache, fp16=True, device_id=0))
    assert [name for name, _ in chosen] == JETSON
    trt = chosen[0][1]
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(cache)
    assert trt["trt_timing_cache_path"] == str(cache)
    assert trt["trt_fp16_enable"] == "True"
    assert cache.is_dir()  # created ahead of time, so a read-only mistake shows at start-up, not mid-task
    assert chosen[1] == (CUDA, {"device_id": "0", "arena_extend_strategy": "kSameAsRequested"})
    fp32 = select_providers([TENSORRT], available=[TENSORRT, CPU], options=ProviderOptions(fp16=False))
    assert fp32[0][1]["trt_fp16_enable"] == "False" and "trt_engine_cache_path" not in fp32[0][1]


def test_cuda_only_build_and_cpu_always_last():
    chosen = select_providers([TENSORRT, CUDA], available=[CUDA, CPU])
    assert [name for name, _ in chosen] == [CUDA, CPU]
    assert [n for n, _ in select_providers([CPU, CPU], available=[CPU])] == [CPU]


def test_misspelt_provider_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown execution provider 'CudaExecutionProvider'"):
        select_providers(["CudaExecutionProvider", CPU])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_engine_cache_is_a_config_error(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="TensorRT engine cache"):
        select_providers([TENSORRT], available=[TENSORRT, CPU], options=ProviderOptions(trt_cache_dir=ro / "c"))


def test_unwritable_engine_cache_path_under_a_file_is_a_config_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="TensorRT engine cache"):
        select_providers([TENSORRT], available=[TENSORRT, CPU], options=ProviderOptions(trt_cache_dir=blocker / "c"))


def test_real_session_requested_on_gpu_runs_on_cpu():
    providers = select_providers(JETSON)
    session = create_session(tiny_model(), providers, session_options(1))
    assert session.get_providers()[-1] == CPU
    y = session.run(None, {"x": np.ones((1, 4), np.float32)})[0]
    assert y.tolist() == [[12.0, 16.0]]


def test_session_options_threads_and_affinity():
    cores = sorted(os.sched_getaffinity(0))
    threads = min(2, len(cores))
    so = session_options(threads, cores[:threads])
    assert so.intra_op_num_threads == threads
    if threads > 1:
        assert so.get_session_config_entry("session.intra_op_thread_affinities") == str(cores[1] + 1)
    session = create_session(tiny_model(), [(CPU, {})], so)
    assert session.run(None, {"x": np.zeros((1, 4), np.float32)})[0].shape == (1, 2)
    with pytest.raises(ConfigError, match="one core per thread"):
        session_options(2, [0])
    with pytest.raises(ConfigError, match="may not use"):
        session_options(1, [100_000])
    with pytest.raises(ConfigError, match="at least 1"):
        session_options(0)


def test_provider_failing_at_session_creation_falls_back(caplog):
    """A present but broken accelerator (e.g. a TensorRT/CUDA library mismatch) raises while the session is
    created. This ORT build has no GPU provider to break, so the factory raises for the first attempt the way
    ORT does for a failing provider, and the real session is then built on what remains."""
    caplog.set_level(logging.WARNING, logger="vla_edge.providers")
    attempts: list[list[str]] = []

    def factory(model, sess_options=None, providers=(), provider_options=()):
        attempts.append(list(providers))
        if CUDA in providers:
            raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version")
        return ort.InferenceSession(model, sess_options=sess_options, providers=providers,
                                    provider_options=provider_options)

    session = create_session(tiny_model(), [(CUDA, {"device_id": "0"}), (CPU, {})], factory=factory)
    assert attempts == [[CUDA, CPU], [CPU]]
    assert session.get_providers() == [CPU]
    assert "CUDAExecutionProvider failed to create a session" in caplog.text
    assert "driver version is insufficient" in caplog.text

    def always_broken(model, **kwargs):
        raise RuntimeError("model is corrupt")

    with pytest.raises(RuntimeError, match="corrupt"):
        create_session(tiny_model(), [(CUDA, {}), (CPU, {})], factory=always_broken)


def test_tensorrt_options_come_from_the_one_config_object(tmp_path: Path, monkeypatch):
    from vla_edge.config import load_settings
    from vla_edge.providers import options_from_settings, provider_options

    config = tmp_path / "vla-edge.toml"
    config.write_text(f'[policy]\ntrt_cache_dir = "{tmp_path / "engines"}"\ntrt_fp16 = false\n'
                      f'[task]\nstate_dir = "{tmp_path / "state"}"\n')
    options = options_from_settings(load_settings(config))
    assert options == ProviderOptions(trt_cache_dir=tmp_path / "engines", fp16=False)
    trt = provider_options(TENSORRT, options)
    assert trt["trt_fp16_enable"] == "False" and trt["trt_engine_cache_path"] == str(tmp_path / "engines")
    # The environment wins over the file, as for every setting; the cache defaults to the state directory.
    monkeypatch.setenv("VLA_EDGE_POLICY__TRT_FP16", "true")
    config.write_text(f'[task]\nstate_dir = "{tmp_path / "state"}"\n')
    options = options_from_settings(load_settings(config))
    assert options == ProviderOptions(trt_cache_dir=tmp_path / "state" / "trt-cache", fp16=True)


def test_the_daemon_hands_the_tensorrt_options_to_onnxruntime(tmp_path: Path, monkeypatch):
    """The daemon's own start-up path (service.open_policy) on a build that reports TensorRT: every graph's session
    is asked for TensorRT > CUDA > CPU with the configured cache and fp16. This machine has no GPU, so the sessions
    are then made on the CPU provider (the one seam: ORT's constructor, recorded and called for real)."""
    from vla_edge.bundle import load_bundle
    from vla_edge.config import load_settings
    from vla_edge.paths import REFERENCE_BUNDLE_DIR
    from vla_edge.service import open_policy

    config = tmp_path / "vla-edge.toml"
    config.write_text(f'[policy]\ntrt_fp16 = false\n[task]\nstate_dir = "{tmp_path / "state"}"\n')
    settings = load_settings(config)
    calls: list[tuple[list[str], list[dict[str, str]]]] = []
    real_session = ort.InferenceSession

    def recording_session(model, sess_options=None, providers=None, provider_options=None, **kwargs):
        calls.append((list(providers or []), [dict(o) for o in provider_options or []]))
        return real_session(model, sess_options=sess_options, providers=[CPU], **kwargs)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    policy, _ = open_policy(load_bundle(REFERENCE_BUNDLE_DIR), settings)
    assert len(calls) == 3  # instruction encoder, observation encoder, denoiser
    cache = tmp_path / "state" / "trt-cache"
    for providers, options in calls:
        assert providers == [TENSORRT, CUDA, CPU]
        assert options[0]["trt_fp16_enable"] == "False"
        assert options[0]["trt_engine_cache_enable"] == "True" and options[0]["trt_engine_cache_path"] == str(cache)
        assert options[1] == {"device_id": "0", "arena_extend_strategy": "kSameAsRequested"} and options[2] == {}
    assert cache.is_dir()
    assert policy.providers_in_use == [CPU]
