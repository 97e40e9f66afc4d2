"""Every check ``vla-edge run`` makes before it opens any hardware, in one place.

The daemon's start runs these first (``Daemon.start``), and ``vla-edge config check`` runs exactly these, so a
config that ``check`` calls valid gets past every configuration check of ``run``; only what needs the hardware
itself (a camera that does not deliver, a port another process holds, a controller that never connects) can
still fail there. Each check reads the settings and the file system, opens no device and binds no socket, and
returns the problems it found as lines that name the setting to change; all of them are reported at once.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from vla_edge.config import Settings, cross_field_problems
from vla_edge.errors import ConfigError, VlaEdgeError


def _camera(s: Settings) -> None:
    for setting, source in [("camera.source", s.camera.source),
                            *((f"camera.views.{name}.source", view.source) for name, view in s.camera.views.items())]:
        _camera_source(setting, source)


def _camera_source(setting: str, source: str) -> None:
    from vla_edge.camera import SIM_SOURCE, SourceKind, parse_source
    from vla_edge.camera.core import CameraError

    if source.strip() == SIM_SOURCE:
        return
    target = parse_source(source)  # raises CameraError for an unsupported URL scheme
    if target.kind is SourceKind.DEVICE:
        path = Path(f"/dev/video{target.target}") if isinstance(target.target, int) else Path(str(target.target))
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise CameraError(f"{setting} {source!r}: {path} does not exist (is the camera plugged in? "
                              "`v4l2-ctl --list-devices` lists them)") from None
        if not stat.S_ISCHR(mode):
            raise CameraError(f"{setting} {source!r}: {path} is not a video device")
        if not os.access(path, os.R_OK | os.W_OK):
            raise CameraError(f"{setting} {source!r}: this user cannot open {path} "
                              "(add it to the 'video' group)")
    elif target.kind is SourceKind.FILE:
        path = Path(str(target.target))
        if not path.is_file():
            raise CameraError(f"{setting} {source!r}: no such video file")
        if not os.access(path, os.R_OK):
            raise CameraError(f"{setting} {source!r}: the file is not readable by this user")


def _endpoint(endpoint: str, setting: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("tcp", "ipc", "inproc"):
        raise ConfigError(f"{setting} {endpoint!r}: use tcp://HOST:PORT (or ipc://PATH)")
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ConfigError(f"{setting} {endpoint!r}: use tcp://HOST:PORT")


def _stream(s: Settings) -> None:
    from vla_edge.keys import authorized_dir, server_keypair
    from vla_edge.wire import check_security

    _endpoint(s.stream.command_endpoint, "stream.command_endpoint")
    _endpoint(s.stream.state_endpoint, "stream.state_endpoint")
    check_security(s.stream.curve, [s.stream.command_endpoint, s.stream.state_endpoint])
    if s.stream.curve:
        server_keypair(s.stream.keys_dir)
        authorized_dir(s.stream.keys_dir)


def _operator(s: Settings) -> None:
    if s.operator.enabled:
        from vla_edge.operator.console import check_settings

        check_settings(s.operator)


def _writable_dir(path: Path, setting: str) -> None:
    """``path`` exists as a writable directory, or can be made (its nearest existing parent is writable)."""
    here = Path(path)
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    if here != Path(path) and not here.is_dir():
        raise ConfigError(f"{setting} = {path}: {here} is not a directory")
    if here == Path(path) and not here.is_dir():
        raise ConfigError(f"{setting} = {path} is not a directory")
    if not os.access(here, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting} = {path}: this user cannot write to {here}")


def _task(s: Settings) -> None:
    _writable_dir(s.task.state_dir, "task.state_dir")


def _inbox(s: Settings) -> None:
    _writable_dir(s.task.inbox_dir, "task.inbox_dir (used by `vla-edge run` without --task)")


def _recorder(s: Settings) -> None:
    if not s.recorder.enabled:
        return
    missing = [m for m in ("pyarrow", "av") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"recorder.enabled needs {', '.join(missing)}: install the 'record' extra "
                          "(pip install 'vla-edge[record]') or set recorder.enabled = false")
    _writable_dir(s.recorder.dataset_dir, "recorder.dataset_dir")


def _confidence(s: Settings) -> None:
    if s.confidence.enabled and s.confidence.thresholds_file is not None:
        from vla_edge.service import load_thresholds

        load_thresholds(s.confidence.thresholds_file)


def _remote(s: Settings) -> None:
    if s.remote.enabled and importlib.util.find_spec("tritonclient") is None:
        raise ConfigError("remote.enabled needs tritonclient: install the 'remote' extra "
                          "(pip install 'vla-edge[remote]') or set remote.enabled = false")


def _bundle_keys(s: Settings) -> None:
    from vla_edge.signing import load_public_key

    if s.policy.require_signature and not s.policy.trusted_keys:
        raise ConfigError("policy.require_signature = true but policy.trusted_keys is empty")
    for key in s.policy.trusted_keys:
        load_public_key(key)


CHECKS: tuple[Callable[[Settings], None], ...] = (
    _camera, _stream, _operator, _task, _recorder, _confidence, _remote, _bundle_keys,
)


def problems(settings: Settings, *, inbox: bool = False) -> list[str]:
    """Everything wrong with ``settings`` that can be known without the bundle and without hardware.
    ``inbox``: also the task inbox (``vla-edge run`` without ``--task``)."""
    found: list[str] = []
    for check in (*CHECKS, *((_inbox,) if inbox else ())):
        try:
            check(settings)
        except VlaEdgeError as exc:
            found.append(str(exc))
    return found


def bundle_problems(settings: Settings, bundle) -> list[str]:
    """What the bundle makes wrong with ``settings``: its variant, and the control rate that will run."""
    from vla_edge.policy import manifest_v2

    manifest = manifest_v2(bundle)  # schema 1 upgraded in memory
    found = []
    if settings.policy.precision not in manifest.variants:
        found.append(f"policy.precision = {settings.policy.precision!r}, but bundle {bundle.path} has only "
                     f"{', '.join(manifest.variants)}")
    rate = settings.scheduler.control_rate_hz or manifest.control_rate_hz
    found += [f"{p} (the bundle's control_rate_hz applies: set scheduler.control_rate_hz)"
              if settings.scheduler.control_rate_hz is None else p
              for p in cross_field_problems(settings, control_rate_hz=rate) if "control" in p]
    return found


def check(settings: Settings, *, inbox: bool = False) -> None:
    """Raise ConfigError listing every problem ``problems`` finds (the daemon's first step at start)."""
    found = problems(settings, inbox=inbox)
    if found:
        raise ConfigError(report(found))


def report(found: list[str]) -> str:
    if len(found) == 1:
        return found[0]
    return f"{len(found)} problems in the configuration:\n  " + "\n  ".join(found)
