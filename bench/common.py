"""What every benchmark part shares: statistics, machine facts, worker processes, JSON/PNG/table output."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from vla_edge.errors import VlaEdgeError

THREADS = 2  # every variant gets the same intra-op threads: the boards this targets have 2-6 big cores
console = Console(stderr=False, highlight=False, width=140)


@dataclass(frozen=True)
class BenchConfig:
    """What every part is given: where results go, a scratch directory, quick (CI) or full, a bundle override."""

    out: Path
    work: Path
    quick: bool = False
    bundle: Path | None = None
    threads: int = THREADS  # intra-op threads of every variant (the same for all: a fair comparison)


class BenchError(VlaEdgeError):
    """A benchmark part cannot run here (missing extra, missing bundle, a worker that died)."""


def require_torch(part: str) -> None:
    """Torch-dependent parts fail with an actionable message instead of an ImportError traceback."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BenchError(
            f"bench part {part!r} needs PyTorch (to measure eager PyTorch or to build models): "
            "install the [train] extra: pip install 'vla-edge[train]'"
        ) from None


def latency_stats(values_ms: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values_ms, dtype=np.float64)
    if array.size == 0:
        raise BenchError("no timings were recorded")
    return {
        "n": int(array.size),
        "median_ms": round(float(np.median(array)), 4),
        "p99_ms": round(float(np.percentile(array, 99)), 4),
        "min_ms": round(float(array.min()), 4),
        "max_ms": round(float(array.max()), 4),
    }


def median_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """The median of ``values`` and a distribution-free confidence interval for it (order statistics).

    The interval [x_(k), x_(n+1-k)] (sorted values, 1-based) covers the true median with probability
    1 - 2 P(Binomial(n, 1/2) < k); ``k`` is the largest rank whose coverage is still >= ``confidence``. No normality
    is assumed, so a few load spikes on a shared machine widen the interval instead of moving a mean. Needs n >= 6
    for 95 %; fewer samples raise BenchError (an interval that cannot be computed is not a verdict).
    """
    array = np.sort(np.asarray(values, dtype=np.float64))
    n = int(array.size)

    def coverage(rank: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(rank)) / 2.0**n

    ranks = [rank for rank in range(1, n // 2 + 1) if coverage(rank) >= confidence]
    if not ranks:
        raise BenchError(f"{n} samples are too few for a {confidence:.0%} interval on a median")
    k = max(ranks)
    coverage_k = coverage(k)
    return {
        "n": n,
        "median": round(float(np.median(array)), 4),
        "low": round(float(array[k - 1]), 4),
        "high": round(float(array[n - k]), 4),
        "confidence": round(coverage_k, 4),
    }


def interval_verdict(interval: dict[str, float], target: float, noisy: bool = False) -> str:
    """MET only when the whole interval clears the target; MISSED when it lies below; NOT SHOWN when it straddles
    the target (more samples or a quieter machine would decide); NOISY when a guard says the figure is not real."""
    if noisy:
        return "NOISY"
    if interval["low"] >= target:
        return "MET"
    if interval["high"] < target:
        return "MISSED"
    return "NOT SHOWN"


def rss_mb() -> float:
    """Current resident set of this process (MiB)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Whole-process peak resident set (MiB): interpreter, libraries, weights, arenas; what a board pays.

    VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across fork + exec, so a worker started by a parent
    that had imported torch would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "threads": THREADS,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], caption: str = "") -> None:
    table = Table(title=title, caption=caption or None)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    console.print(table)


def pyplot():
    """matplotlib's pyplot on the file-only backend, or None (PNG skipped, said once) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib is not installed: PNG plots skipped (pip install matplotlib)")
        return None
    return plt


def latency_bars(axis: Any, rows: dict[str, dict[str, float]], colour: str, ylabel: str, title: str) -> None:
    """Median bars with p99 ticks, one per variant (``rows``: name → latency_stats)."""
    names = list(rows)
    axis.bar(names, [rows[n]["median_ms"] for n in names], color=colour, label="median")
    axis.scatter(names, [rows[n]["p99_ms"] for n in names], color="black", marker="_", s=400, label="p99", zorder=3)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.tick_params(axis="x", rotation=20)
    axis.legend()


def met(value: float, target: float, higher_is_better: bool = True) -> bool:
    return bool(value >= target) if higher_is_better else bool(value <= target)


def measure_bandwidth_gbs(size_mb: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Sustained read bandwidth of main memory: best of several streaming sums over a buffer >> cache.

    A sum reads every byte once and writes almost nothing, like a weight-streaming matmul; numpy's sum is
    single-threaded, so a copy with two threads is also measured and the larger figure is the limit used.
    """
    buffer = np.ones(size_mb * 2**20 // 8, dtype=np.float64)
    read_best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        float(buffer.sum())
        read_best = max(read_best, buffer.nbytes / (time.perf_counter() - start) / 1e9)
    threaded_best = _threaded_read_gbs(buffer, repeats)
    del buffer
    return {
        "buffer_mb": size_mb,
        "single_thread_read_gbs": round(read_best, 2),
        "two_thread_read_gbs": round(threaded_best, 2),
        "limit_gbs": round(max(read_best, threaded_best), 2),
    }


def _threaded_read_gbs(buffer: np.ndarray, repeats: int) -> float:
    from concurrent.futures import ThreadPoolExecutor

    halves = np.array_split(buffer, THREADS)
    best = 0.0
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda part: float(part.sum()), halves))  # numpy releases the GIL in sum
            best = max(best, buffer.nbytes / (time.perf_counter() - start) / 1e9)
    return best


@dataclass
class Worker:
    """A benchmark variant in its own process, so its peak resident memory is its own.

    Protocol: one JSON object per line each way. The child (``python -m bench.worker``) answers every request
    with one line; ``{"error": ...}`` ends the conversation.
    """

    name: str
    process: subprocess.Popen
    ready: dict[str, Any] | None = None  # the child's first line, e.g. its RSS before loading the model

    @classmethod
    def start(cls, name: str, spec: dict[str, Any], timeout_s: float = 600.0) -> Worker:
        env = dict(os.environ)
        # Only the thread count we set: no oversubscription by OpenMP/MKL pools inside torch or numpy.
        threads = str(spec.get("threads", THREADS))
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"})
        # spec["python"]: another environment's interpreter (the LeRobot one), with this checkout on its path
        python = spec.get("python") or sys.executable
        if spec.get("python"):
            root = str(Path(__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
            env.setdefault("HF_HUB_OFFLINE", "1")
        process = subprocess.Popen(
            [python, "-m", "bench.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        worker = cls(name=name, process=process)
        worker.ready = worker._read(timeout_s)
        return worker

    def request(self, **message: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the child died; _read reports its stderr
        return self._read(600.0)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait(timeout=timeout_s)
                stderr = self.process.stderr.read() if self.process.stderr else ""
                raise BenchError(f"benchmark worker {self.name!r} exited ({self.process.returncode}): {stderr[-2000:]}")
            if line.startswith("{"):
                break
            console.print(f"[dim]{self.name}: {line.rstrip()}[/dim]")  # a library printing to stdout, not an answer
        answer = json.loads(line)
        if "error" in answer:
            self.close()
            raise BenchError(f"benchmark worker {self.name!r}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def interleaved_rounds(workers: list[Worker], rounds: int, chunks_per_round: int) -> dict[str, list[float]]:
    """A B C, B C A, ...: each round runs every variant once, rotating the order so none always goes first."""
    timings: dict[str, list[float]] = {w.name: [] for w in workers}
    for r in range(rounds):
        shift = r % len(workers)
        for worker in workers[shift:] + workers[:shift]:
            timings[worker.name].extend(worker.request(op="run", n=chunks_per_round)["ms"])
    return timings


def reference_bundle(explicit: Path | None, work: Path) -> Path:
    """The bundle to measure: ``explicit``, else the committed reference bundle, else a quick build in ``work``.

    A quick build is barely trained: fine for speed and memory (same graphs, same sizes), not for accuracy.
    """
    from vla_edge.paths import REFERENCE_BUNDLE_DIR

    if explicit is not None:
        if not (explicit / "manifest.json").is_file():
            raise BenchError(f"{explicit} is not a bundle (no manifest.json); build one with `python -m models.build`")
        return explicit
    if (REFERENCE_BUNDLE_DIR / "manifest.json").is_file():
        return REFERENCE_BUNDLE_DIR
    quick = work / "reference-quick"
    if not (quick / "manifest.json").is_file():
        require_torch("reference bundle build")
        console.print(f"no reference bundle at {REFERENCE_BUNDLE_DIR}: building a quick one in {quick} (~30 s)")
        done = subprocess.run(
            [sys.executable, "-m", "models.build", "--quick", "--out", str(quick), "--work", str(work / "build")],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise BenchError(f"quick reference build failed:\n{done.stderr[-2000:]}")
    return quick


def save_observation(path: Path, world: Any = None) -> Path:
    """One rendered frame and state that every worker reads (``spec["observation"]``) instead of rendering its own:
    a policy process needs no simulator, and every variant gets the same input. ``world``: a TabletopWorld, else
    layout 0."""
    if world is None:
        from hil.world import TabletopWorld

        world = TabletopWorld(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=world.render(), state=world.state().astype(np.float32))
    return path


def instruction_for(bundle_dir: Path) -> str:
    """An instruction every reference bundle knows (all its words are in the vocabulary)."""
    from vla_edge.bundle import load_bundle

    text = "put the red block in the left bin"
    load_bundle(bundle_dir, verify=False).tokenizer().encode(text)  # raises UnknownWordError naming the word
    return text


def part_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every bench part shares: ``python -m bench.<part> [--quick] [--out] [--work] [--bundle]``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("models/work/bench"))
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=THREADS, help=f"intra-op threads per variant (default {THREADS})")
    return parser


def bench_config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(out=args.out, work=args.work, quick=args.quick, bundle=args.bundle, threads=args.threads)


def part_main(module: str, doc: str | None, run: Callable[[BenchConfig], object], argv: list[str] | None) -> int:
    """The command line of a bench part with only the shared options."""
    run(bench_config(part_parser(module, doc).parse_args(argv)))
    return 0
