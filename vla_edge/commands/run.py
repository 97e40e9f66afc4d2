"""``vla-edge run``: the daemon. Loads the config, brings the pipeline up, runs the task, holds on exit."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from vla_edge import preflight
from vla_edge.config import load_settings
from vla_edge.errors import VlaEdgeError
from vla_edge.service import Daemon
from vla_edge.inbox import TaskInbox
from vla_edge.task import load_task
from vla_edge.telemetry import configure_logging

log = logging.getLogger("vla_edge.run")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the daemon (camera → policy → confidence → action stream) on a task",
        description="Run the vla-edge daemon. Stops cleanly on SIGTERM or ctrl-C with the arm holding.",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML config file (env VLA_EDGE_* overrides it)")
    parser.add_argument("--task", type=Path, default=None,
                        help="run this task file (TOML/JSON) and exit; without it, run task files dropped into "
                        "task.inbox_dir until stopped")
    parser.add_argument("--controller-timeout", type=float, default=30.0,
                        help="seconds to wait for the motor controller's handshake before giving up")
    add_rerun_argument(parser)
    parser.set_defaults(func=run)


def add_rerun_argument(parser: argparse.ArgumentParser) -> None:
    from vla_edge.rerun_log import DEFAULT_VIEWER

    parser.add_argument(
        "--rerun", nargs="?", const=DEFAULT_VIEWER, default=None, metavar="ADDR|FILE.rrd",
        help="log frames, plans, confidence, actions and operator decisions to Rerun: a running viewer "
        f"(default {DEFAULT_VIEWER}) or an .rrd file (needs the rerun extra; off by default)")


def rerun_overrides(args: argparse.Namespace) -> dict:
    return {"telemetry": {"rerun": args.rerun}} if getattr(args, "rerun", None) else {}


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM (systemd) and SIGINT (ctrl-C) end the run through the same path: set stop, the loop holds."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s; stopping with the arm holding", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, **rerun_overrides(args))
    preflight.check(settings, inbox=args.task is None)
    configure_logging(settings.telemetry)
    spec = load_task(args.task) if args.task is not None else None
    stop = threading.Event()
    install_stop_handlers(stop)
    with Daemon(settings) as daemon:
        if not daemon.wait_for_controller(args.controller_timeout):
            raise VlaEdgeError(
                f"no motor controller completed the handshake on {settings.stream.command_endpoint} within "
                f"{args.controller_timeout:g} s; is it running, and are its keys authorised?"
            )
        daemon.ready()
        if spec is None:
            serve_inbox(daemon, TaskInbox(settings.task.inbox_dir), stop, settings.task.idle_poll_s)
            return 0
        result = daemon.run_task(spec, stop)
    log.info("task %s ended: %s at step %d", result.task_id, result.status, result.next_step)
    return 0 if result.status in ("completed", "stopped") else 1


def serve_inbox(daemon: Daemon, inbox: TaskInbox, stop: threading.Event, poll_s: float) -> None:
    """Run task files from the inbox, oldest first, until stopped; hold the arm while idle."""
    log.info("waiting for task files in %s", inbox.directory)
    while not stop.is_set():
        taken = inbox.take()  # a file that is not a valid task moves to failed/ with the reason; never raises
        if taken is None:
            daemon.idle()
            stop.wait(poll_s)
            continue
        path, spec = taken
        result = daemon.run_task(spec, stop)
        log.info("task %s ended: %s at step %d", result.task_id, result.status, result.next_step)
        if result.status == "completed":
            inbox.finish(path, "done")
        elif result.status == "aborted":
            inbox.finish(path, "failed", result.reason or "aborted")
        # "stopped": the file stays, and the task resumes from its checkpoint on the next start.
