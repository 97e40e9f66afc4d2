"""``vla-edge dataset view DIR``: a recorded LeRobot dataset in Rerun, with the intervention flag shown."""

from __future__ import annotations

import argparse
from pathlib import Path

from vla_edge.errors import VlaEdgeError

DEFAULT_VIEWER = "rerun+http://127.0.0.1:9876/proxy"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dataset", help="look at recorded datasets (LeRobot layout)")
    sub = parser.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    view = sub.add_parser(
        "view", help="open a dataset's episodes in Rerun, with the intervention flag",
        description="Open a recorded dataset in Rerun: video, state, action, task and, per frame, whether the "
        "operator was driving (intervention). Without a screen, --save writes .rrd files to open elsewhere "
        "(`rerun FILE.rrd`). Needs the rerun extra; the video needs ffmpeg.")
    view.add_argument("dir", type=Path, help="the dataset directory (the one with meta/ and data/)")
    view.add_argument("--episode", type=int, action="append", default=None,
                      help="episode index to show (repeat for more; default: all)")
    target = view.add_mutually_exclusive_group()
    target.add_argument("--save", type=Path, default=None, metavar="FILE.rrd",
                        help="write the recording here instead (one file per episode when several: FILE-episode-N.rrd)")
    target.add_argument("--connect", default=DEFAULT_VIEWER, metavar="ADDR",
                        help=f"a running Rerun viewer (`rerun`); default {DEFAULT_VIEWER}")
    view.set_defaults(func=run_view)


def run_view(args: argparse.Namespace) -> int:
    from vla_edge.dataset_view import view

    if args.save is not None and args.save.suffix != ".rrd":
        raise VlaEdgeError(f"--save needs a path ending in .rrd, got {args.save}")
    if args.save is not None and not args.save.parent.is_dir():
        raise VlaEdgeError(f"--save: {args.save.parent} is not a directory")
    for result in view(args.dir, args.episode, args.save, None if args.save is not None else args.connect):
        video = "" if result["video"] else " (no video: install ffmpeg)"
        print(f"episode {result['episode']}: {result['frames']} frames, {result['intervention_frames']} driven by "
              f"the operator → {result['target']}{video}")
    return 0
