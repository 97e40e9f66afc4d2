"""Which ONNX Runtime execution providers a session uses, with what options, and what happens when one is missing.

The config lists providers in order of preference (TensorRT, CUDA, CPU by default). A board has only some:
a Jetson with JetPack's onnxruntime-gpu has all three, a Raspberry Pi only CPU. ``select_providers`` keeps
the available ones in order, each with its options (TensorRT: engine cache and fp16; CUDA: device; CPU needs
none, its threads are session options), says in the log why each other one was skipped, and always ends with
CPU so nodes the accelerators cannot run still have a home. A misspelt provider name is a config error, not a
silent fallback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from vla_edge.errors import ConfigError

if TYPE_CHECKING:
    from vla_edge.config import Settings

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# What PyPI's CPU wheel reports (Azure: calls to a remote endpoint, no local accelerator).
CPU_BUILD = frozenset({CPU, "AzureExecutionProvider"})

ProviderList = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class ProviderOptions:
    """Options for the accelerated providers.

    ``trt_cache_dir``: where TensorRT keeps built engines and timing caches. Building an engine takes minutes
    on a Jetson; with the cache the second start takes seconds. Put it under the state directory (writable by
    the service, kept across restarts and updates; engines are keyed by the model's hash, so a new bundle
    version simply builds new ones).
    """

    trt_cache_dir: Path | None = None
    fp16: bool = True
    device_id: int = 0
    trt_max_workspace_bytes: int = 1 << 30


def options_from_settings(settings: Settings) -> ProviderOptions:
    """The daemon's provider options, from the one config object (``policy.trt_cache_dir``, ``policy.trt_fp16``)."""
    policy = settings.policy
    cache = policy.trt_cache_dir if policy.trt_cache_dir is not None else settings.task.state_dir / "trt-cache"
    return ProviderOptions(trt_cache_dir=cache, fp16=policy.trt_fp16)


def _flag(value: bool) -> str:
    return "True" if value else "False"


def provider_options(name: str, options: ProviderOptions) -> dict[str, str]:
    """The provider-options dict ONNX Runtime takes for ``name`` (string values work for every provider)."""
    if name == TENSORRT:
        opts = {
            "device_id": str(options.device_id),
            "trt_fp16_enable": _flag(options.fp16),
            "trt_max_workspace_size": str(options.trt_max_workspace_bytes),
        }
        if options.trt_cache_dir is not None:
            cache = str(options.trt_cache_dir)
            opts.update({
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": cache,
            })
        return opts
    if name == CUDA:
        # Grow the arena by what is asked, not by powers of two: the Jetson's GPU memory is the board's RAM.
        return {"device_id": str(options.device_id), "arena_extend_strategy": "kSameAsRequested"}
    return {}


def select_providers(
    preferred: Sequence[str],
    available: Sequence[str] | None = None,
    options: ProviderOptions | None = None,
) -> ProviderList:
    """The preferred providers this build has, in order, each with its options; CPU always last.

    Raises ConfigError for a name ONNX Runtime does not know at all (a typo). A known provider this build or
    board lacks is skipped with a log line saying so.
    """
    options = options or ProviderOptions()
    have = list(ort.get_available_providers() if available is None else available)
    known = set(ort.get_all_providers()) | set(have)
    unknown = [name for name in preferred if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown execution provider {unknown[0]!r} in policy.providers; "
            f"this onnxruntime {ort.__version__} has: {', '.join(have)}"
        )
    chosen: ProviderList = []
    for name in preferred:
        if any(name == picked for picked, _ in chosen):
            continue
        if name not in have:
            # A CPU-only build (a Pi, a laptop) lacking the GPU providers of the default list is expected; an
            # accelerator build lacking one it was asked for is a broken or partial install worth a warning.
            level = logging.INFO if set(have) <= CPU_BUILD else logging.WARNING
            log.log(
                level, "execution provider %s is not available in this onnxruntime build (%s); falling back",
                name, ", ".join(have), extra={"provider": name, "available": have},
            )
            continue
        if name == TENSORRT and options.trt_cache_dir is not None:
            _ensure_cache_dir(options.trt_cache_dir)
        chosen.append((name, provider_options(name, options)))
    if not any(name == CPU for name, _ in chosen):
        chosen.append((CPU, {}))
    log.info("execution providers: %s", " > ".join(name for name, _ in chosen),
             extra={"providers": [name for name, _ in chosen]})
    return chosen


def _ensure_cache_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the TensorRT engine cache directory {path}: {exc} "
            "(it must be writable by the service; the unit's ReadWritePaths/StateDirectory should cover it)"
        ) from None


def session_options(intra_op_threads: int, cpu_affinity: Sequence[int] | None = None) -> ort.SessionOptions:
    """Session options for a small board: a fixed intra-op thread count, optionally pinned to cores.

    ``cpu_affinity`` lists one core per intra-op thread; ONNX Runtime runs the first share of the work on the
    calling thread, so only the other ``threads - 1`` are pinned here (the caller's own affinity, e.g. the
    unit's ``CPUAffinity=``, applies to it).
    """
    if intra_op_threads < 1:
        raise ConfigError(f"intra_op_threads must be at least 1 (got {intra_op_threads})")
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if cpu_affinity:
        cores = list(cpu_affinity)
        if len(cores) != intra_op_threads:
            raise ConfigError(
                f"cpu affinity lists {len(cores)} cores for {intra_op_threads} threads; give one core per thread")
        online = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(cores)
        missing = [c for c in cores if c not in online]
        if missing:
            raise ConfigError(f"cpu affinity names core {missing[0]}, which this process may not use ({sorted(online)})")
        if intra_op_threads > 1:
            # ORT numbers logical processors from 1 in this string.
            so.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c + 1) for c in cores[1:]))
    return so


def create_session(model: str | bytes | Path, providers: ProviderList,
                   sess_options: ort.SessionOptions | None = None,
                   factory: Callable[..., ort.InferenceSession] = ort.InferenceSession) -> ort.InferenceSession:
    """An InferenceSession on the first provider set that works, dropping the leading provider on failure.

    An accelerator that is present but broken (driver mismatch, no engine can be built) raises at session
    creation; the daemon then logs why and runs on what remains rather than not starting at all.
    """
    remaining = list(providers)
    source = str(model) if isinstance(model, Path) else model
    while True:
        try:
            session = factory(
                source, sess_options=sess_options,
                providers=[name for name, _ in remaining], provider_options=[opts for _, opts in remaining],
            )
        except Exception as exc:  # ORT raises its own exception types per provider; all mean "try the next"
            if len(remaining) <= 1:
                raise
            failed = remaining.pop(0)[0]
            log.warning("%s failed to create a session (%s); falling back to %s", failed, exc,
                        remaining[0][0], extra={"provider": failed})
            continue
        actual = session.get_providers()
        wanted = [name for name, _ in remaining]
        if actual[:1] != wanted[:1]:
            log.warning("onnxruntime placed the session on %s instead of %s", actual, wanted,
                        extra={"providers": actual})
        return session
