"""The daemon's start-up checks of a bundle, run in a child process, so ``vla-edge bundle install`` refuses what
the daemon could not start with, and a model too big for the board fails the install, not the robot.

The child runs exactly what ``Daemon.start`` runs before it opens any hardware (``service.open_bundle`` minus
the signature, which the store has already checked over every file, then ``service.open_policy``): the manifest
(strict JSON, sizes bounded, declared tensors consistent with its sizes), every listed file present, the
configured variant's graphs read once and digest-checked, their sessions created from those bytes, every
graph's input/output names, dtypes and shapes compared with the manifest, a warm-up inference at K = 1 and
K = policy.num_samples, and the confidence monitor. It reports one JSON line; a failure is one error line.

    python -m vla_edge.bundle_check BUNDLE_DIR [--config FILE] [--precision int8]
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vla_edge.errors import BundleError, VlaEdgeError

DEFAULT_TIMEOUT_S = 600.0  # TensorRT builds its engines on first load: minutes on a Jetson


@dataclass(frozen=True)
class StartCheck:
    """What the child measured while starting the variant as the daemon would."""

    precision: str
    providers: list[str]
    load_s: float
    peak_rss_mb: float


def check_in_child(bundle_dir: Path, precision: str, config: Path | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> StartCheck:
    """Run the start-up checks of ``precision`` on ``bundle_dir`` in a child process. Raises BundleError."""
    command = [sys.executable, "-m", "vla_edge.bundle_check", str(bundle_dir), "--precision", precision]
    if config is not None:
        command += ["--config", str(config)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BundleError(f"bundle {bundle_dir}: the start-up check of the {precision} variant took longer than "
                          f"{timeout_s:g} s (raise --check-timeout if this board is slow)") from None
    if proc.returncode == 0:
        try:
            return StartCheck(**json.loads(proc.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError, TypeError):
            raise BundleError(f"bundle {bundle_dir}: the start-up check printed no result") from None
    last = (proc.stderr.strip().splitlines() or [""])[-1].removeprefix("vla-edge: error: ")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        hint = " (out of memory? the model may be too big for this board)" if name == "SIGKILL" else ""
        raise BundleError(f"bundle {bundle_dir}: the start-up check of the {precision} variant was killed by "
                          f"{name}{hint}")
    raise BundleError(f"the {precision} variant would not start: {last or f'exit status {proc.returncode}'}")


def _run(bundle_dir: Path, precision: str, config: Path | None) -> StartCheck:
    from vla_edge.bundle import load_bundle
    from vla_edge.config import load_settings
    from vla_edge.service import open_policy

    settings = load_settings(config)
    # Not as load_settings overrides: VLA_EDGE_POLICY__* in the environment would win over those.
    policy_settings = settings.policy.model_copy(update={"bundle": Path(bundle_dir), "precision": precision})
    settings = settings.model_copy(update={"policy": policy_settings})
    started = time.monotonic()
    bundle = load_bundle(bundle_dir, verify="structure")
    try:
        policy, _monitor = open_policy(bundle, settings)
    except MemoryError:
        raise BundleError(f"the {precision} variant does not fit in this board's memory") from None
    return StartCheck(precision=precision, providers=policy.providers_in_use,
                      load_s=round(time.monotonic() - started, 3),
                      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vla_edge.bundle_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        result = _run(args.bundle, args.precision, args.config)
    except VlaEdgeError as exc:
        print(f"vla-edge: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
