"""``vla-edge config``: check a config file, print the reference of every setting, or an example file."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, SecretStr

from vla_edge.config import Settings, load_settings
from vla_edge.errors import ConfigError, VlaEdgeError
from vla_edge.paths import REPO_ROOT


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="check a config file; print the settings reference")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="run every check `vla-edge run` makes before it opens hardware",
        description="Validate a TOML file plus VLA_EDGE_* environment overrides, then run every check the daemon "
        "makes before it opens any hardware: camera device or file, stream encryption and keys, console token, "
        "writable directories, the bundle (manifest, files, signature) and, in a child process, the start of the "
        "configured variant (graph shapes, a warm-up inference). Every problem is listed; exit 2 if any.")
    check.add_argument("file", type=Path)
    check.add_argument("--no-start", action="store_true",
                       help="skip starting the policy variant (the sessions and warm-up; seconds to minutes)")
    check.set_defaults(func=_check)
    reference = actions.add_parser("reference", help="every setting with its default, as Markdown")
    reference.set_defaults(func=_reference)
    example = actions.add_parser("example", help="a TOML file with every default, to start from")
    example.set_defaults(func=_example)


def _check(args: argparse.Namespace) -> int:
    from vla_edge import preflight
    from vla_edge.bundle_check import check_in_child
    from vla_edge.service import build_monitor, open_bundle

    settings = load_settings(args.file)
    found = preflight.problems(settings, inbox=True)
    try:
        bundle = open_bundle(settings)
    except VlaEdgeError as exc:
        found.append(str(exc))
    else:
        found += preflight.bundle_problems(settings, bundle)
        try:
            build_monitor(bundle, settings)
        except VlaEdgeError as exc:
            found.append(str(exc))
        if not found and not args.no_start:
            try:
                check_in_child(bundle.path, settings.policy.precision, args.file)
            except VlaEdgeError as exc:
                found.append(str(exc))
    if found:
        raise ConfigError(f"{args.file}: " + preflight.report(found))
    started = "" if args.no_start else f", {settings.policy.precision} variant starts"
    print(f"{args.file}: valid ({len(Settings.model_fields)} sections; bundle {settings.policy.bundle}{started})")
    return 0


def _shown_default(value: object) -> str:
    if isinstance(value, Path):
        try:
            return str(value.relative_to(REPO_ROOT))
        except ValueError:
            return str(value)
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "(none)"
    return str(value)


def reference_markdown() -> str:
    lines = [
        "| setting | default | environment variable | meaning |",
        "|---|---|---|---|",
    ]
    defaults = Settings()
    for section_name in Settings.model_fields:
        section: BaseModel = getattr(defaults, section_name)
        for field_name, field in type(section).model_fields.items():
            env = f"VLA_EDGE_{section_name.upper()}__{field_name.upper()}"
            default = _shown_default(getattr(section, field_name))
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{section_name}.{field_name}` | `{default}` | `{env}` | {meaning} |")
    return "\n".join(lines) + "\n"


def example_toml() -> str:
    defaults = Settings()
    out: list[str] = ["# vla-edge configuration: every setting at its default. Delete what you do not change.", ""]
    for section_name in Settings.model_fields:
        section: BaseModel = getattr(defaults, section_name)
        out.append(f"[{section_name}]")
        for field_name in type(section).model_fields:
            value = getattr(section, field_name)
            if value is None or isinstance(value, SecretStr):
                out.append(f"# {field_name} =")
            elif isinstance(value, dict):  # a table of tables (camera.views): an example, commented out
                out.append(f"# [{section_name}.{field_name}.NAME]  e.g. [{section_name}.{field_name}.wrist] "
                           'source = "/dev/video2"')
            elif isinstance(value, bool):
                out.append(f"{field_name} = {str(value).lower()}")
            elif isinstance(value, (int, float)):
                out.append(f"{field_name} = {value}")
            elif isinstance(value, list):
                items = ", ".join(f'"{v}"' for v in value)
                out.append(f"{field_name} = [{items}]")
            else:
                out.append(f'{field_name} = "{value}"')
        out.append("")
    return "\n".join(out)


def _reference(args: argparse.Namespace) -> int:
    print(reference_markdown(), end="")
    return 0


def _example(args: argparse.Namespace) -> int:
    print(example_toml(), end="")
    return 0
