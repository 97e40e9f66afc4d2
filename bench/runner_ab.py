"""Per-chunk latency of the policy runner at another git revision vs this checkout, on the same bundle, in one
process, interleaved rounds (so machine load hits both alike): the no-regression check for runner changes.

    python -m bench.runner_ab --before a142505 --rounds 30 --chunks 50

The runner at ``--before`` is ``vla_edge/policy.py`` as committed there, loaded under another module name; it
imports the rest of vla_edge from this checkout (the bundle loader, tokenizer and types it needs must still exist).
Prints the median per-chunk ms of each, the ratio after/before with a 95 % bootstrap interval over rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vla_edge.bundle import load_bundle
from vla_edge.paths import REFERENCE_BUNDLE_DIR, REPO_ROOT


def _runner_at(revision: str) -> type:
    source = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{revision}:vla_edge/policy.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(f"/tmp/vla_edge_policy_{revision}.py")
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"policy_{revision}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.PolicyRunner  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the runner to compare against")
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--chunks", type=int, default=50, help="chunks per round per runner")
    args = parser.parse_args(argv)

    from hil.world import TabletopWorld
    from vla_edge.policy import PolicyRunner

    bundle = load_bundle(args.bundle)
    runners = {"before": _runner_at(args.before)(bundle, args.precision, None, args.threads, 0),
               "after": PolicyRunner(bundle, args.precision, None, args.threads, 0)}
    world = TabletopWorld(3)
    image, state = world.render(), world.state().astype(np.float32)
    instruction = "put the red block in the left bin"
    medians: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner.set_instruction(instruction)
        for _ in range(10):
            runner.sample(runner.encode(image, state), args.samples)
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            runner = runners[name]
            times = []
            for _ in range(args.chunks):
                start = time.perf_counter()
                runner.sample(runner.encode(image, state), args.samples)
                times.append((time.perf_counter() - start) * 1e3)
            medians[name].append(float(np.median(times)))
    before, after = np.asarray(medians["before"]), np.asarray(medians["after"])
    ratios = after / before
    rng = np.random.default_rng(0)
    boot = [np.median(rng.choice(ratios, ratios.size)) for _ in range(2000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"bundle {args.bundle.name} {args.precision}, K={args.samples}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds × {args.chunks} chunks")
    print(f"before ({args.before}): median per chunk {np.median(before):.3f} ms")
    print(f"after (this checkout):   median per chunk {np.median(after):.3f} ms")
    print(f"after/before: {np.median(ratios):.3f} (95 % CI {lo:.3f}–{hi:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
