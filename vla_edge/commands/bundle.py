"""``vla-edge bundle``: sign and verify bundles; install, activate and roll back versions on the robot."""

from __future__ import annotations

import argparse
from pathlib import Path

from vla_edge.bundle_check import DEFAULT_TIMEOUT_S
from vla_edge.bundle_store import BundleStore
from vla_edge.config import load_settings
from vla_edge.errors import VlaEdgeError
from vla_edge.signing import generate_keypair, sign_bundle, verify_bundle

DEFAULT_STORE = Path("/var/lib/vla-edge/bundles")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bundle", help="sign, verify, install, activate and roll back model bundles")
    actions = parser.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    keygen = actions.add_parser("keygen", help="make an ed25519 signing key pair (private key mode 0600)")
    keygen.add_argument("--dir", type=Path, required=True, help="where to write <name>.key and <name>.pub")
    keygen.add_argument("--name", default="bundle-signing", help="file name stem of the pair")
    keygen.set_defaults(func=_keygen)

    sign = actions.add_parser("sign", help="write signature.json over every file of a bundle")
    sign.add_argument("bundle", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="private key (PEM) from `bundle keygen`")
    sign.set_defaults(func=_sign)

    verify = actions.add_parser("verify", help="check a bundle's signature and every file's digest")
    verify.add_argument("bundle", type=Path)
    _trust_args(verify)
    verify.set_defaults(func=_verify)

    install = actions.add_parser(
        "install", help="copy a bundle in as a new version and make it current",
        description="Copy a bundle into the store, check it as the daemon's start would (every digest, the "
        "manifest, the graphs' input/output shapes, and a warm-up inference of the configured variant in a "
        "child process), then make it current. A bundle that fails any check never becomes current.")
    install.add_argument("bundle", type=Path)
    _store_args(install)
    install.add_argument("--no-activate", action="store_true", help="install only; activate later")
    install.add_argument("--precision", choices=["fp32", "int8", "int4", "all"], default=None,
                         help="variant(s) to start in the check (default: policy.precision of --config)")
    install.add_argument("--check-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                         help=f"seconds the start-up check may take per variant (default {DEFAULT_TIMEOUT_S:g})")
    install.set_defaults(func=_install)

    activate = actions.add_parser("activate", help="make an installed version current")
    activate.add_argument("version", help="a name from `vla-edge bundle list`")
    _store_args(activate)
    activate.set_defaults(func=_activate)

    rollback = actions.add_parser("rollback", help="switch back to the previous version")
    _store_args(rollback)
    rollback.set_defaults(func=_rollback)

    upgrade = actions.add_parser("upgrade", help="write a schema-2 copy of a schema-1 bundle (same graphs)")
    upgrade.add_argument("bundle", type=Path, help="a schema-1 bundle directory")
    upgrade.add_argument("out", type=Path, help="new directory for the schema-2 bundle (must not exist)")
    upgrade.add_argument("--state-names", default=None,
                         help="comma-separated names of the state vector (schema 1 had none; default state_0,...)")
    upgrade.set_defaults(func=_upgrade)

    show = actions.add_parser("show", help="what a bundle runs: policy type, weights, views, actions, sampler")
    show.add_argument("bundle", type=Path)
    show.set_defaults(func=_show)

    listing = actions.add_parser("list", help="installed versions; * marks current, - previous")
    listing.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"store root (default {DEFAULT_STORE})")
    listing.set_defaults(func=_list)


def _trust_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, action="append", default=[],
                        help="trusted public key (PEM); repeat for several. Default: policy.trusted_keys of --config")
    parser.add_argument("--config", type=Path, default=None, help="daemon config file (e.g. /etc/vla-edge/vla-edge.toml)")


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"store root (default {DEFAULT_STORE})")
    _trust_args(parser)
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="accept bundles without a valid signature (development only)")


def _trusted_keys(args: argparse.Namespace) -> tuple[list[Path], bool]:
    """Keys from --key, else from the config; whether the config requires signatures (True without one)."""
    require = True
    keys = list(args.key)
    if args.config is not None:
        policy = load_settings(args.config).policy
        require = policy.require_signature
        keys = keys or list(policy.trusted_keys)
    return keys, require


def _store(args: argparse.Namespace, validate: bool = True) -> BundleStore:
    keys, require = _trusted_keys(args)
    require = require and not args.allow_unsigned
    if require and not keys:
        raise VlaEdgeError("no trusted public key: pass --key PUB.pem or --config with policy.trusted_keys "
                           "(or --allow-unsigned for development)")
    loader = None
    if validate:
        from vla_edge.bundle import load_bundle  # only installs need the full loader
        from vla_edge.bundle_check import check_in_child

        configured = load_settings(args.config).policy.precision
        wanted = args.precision or configured

        def loader(path: Path) -> None:
            bundle = load_bundle(path, verify="all")
            precisions = list(bundle.precisions) if wanted == "all" else [wanted]
            for precision in precisions:
                result = check_in_child(path, precision, args.config, args.check_timeout)
                print(f"checked {precision}: started in {result.load_s:.1f} s on {', '.join(result.providers)}, "
                      f"peak memory {result.peak_rss_mb:.0f} MB")

    return BundleStore(args.store, require_signature=require, trusted_keys=keys, validate=loader)


def _keygen(args: argparse.Namespace) -> int:
    priv, pub = generate_keypair(args.dir, name=args.name)
    print(f"private key: {priv}  (mode 0600; keep it on the build machine, never on a robot)")
    print(f"public key:  {pub}  (copy to each robot and list it in policy.trusted_keys)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    out = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle}: {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    keys, _ = _trusted_keys(args)
    info = verify_bundle(args.bundle, keys)
    print(f"OK: {args.bundle} — {info.file_count} files, signed by key {info.key_id} ({info.key_path})")
    return 0


def _install(args: argparse.Namespace) -> int:
    store = _store(args)
    target = store.install(args.bundle, activate=not args.no_activate)
    state = "installed" if args.no_activate else "installed and activated"
    print(f"{state}: {target.name}")
    if not args.no_activate:
        print("restart the daemon to load it: systemctl restart vla-edge")
    return 0


def _activate(args: argparse.Namespace) -> int:
    target = _store(args, validate=False).activate(args.version)
    print(f"current: {target.name}  (restart the daemon to load it: systemctl restart vla-edge)")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    target = _store(args, validate=False).rollback()
    print(f"rolled back; current: {target.name}  (restart the daemon to load it: systemctl restart vla-edge)")
    return 0


def _list(args: argparse.Namespace) -> int:
    versions = BundleStore(args.store, require_signature=False).list()
    if not versions:
        print(f"no bundle versions installed in {args.store}")
        return 1
    for v in versions:
        mark = "*" if v.is_current else "-" if v.is_previous else " "
        print(f"{mark} {v.name}{'' if v.signed else '  (unsigned)'}")
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from vla_edge.bundle import BundleManifest, load_bundle
    from vla_edge.bundle_build import assemble_bundle
    from vla_edge.bundle_schema import upgrade_v1

    if args.out.exists():
        raise VlaEdgeError(f"{args.out} exists; give a new directory")
    bundle = load_bundle(args.bundle, verify=True)
    if not isinstance(bundle.manifest, BundleManifest):
        raise VlaEdgeError(f"{args.bundle} is already schema {bundle.manifest.schema_version}")
    names = [n.strip() for n in args.state_names.split(",")] if args.state_names else None
    try:
        upgraded = upgrade_v1(bundle.manifest, names)
    except ValueError as exc:
        raise VlaEdgeError(str(exc)) from None
    data = upgraded.model_dump(mode="json")
    assemble_bundle(args.out, data, {rel: bundle.path / rel for rel in bundle.manifest.files})
    print(f"wrote schema-2 bundle {args.out} ({len(bundle.manifest.files)} files copied)")
    if (args.bundle / "signature.json").exists():
        print(f"the signature covers the manifest: sign it again (vla-edge bundle sign {args.out} --key KEY)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from vla_edge.bundle import load_bundle
    from vla_edge.policy import manifest_v2

    bundle = load_bundle(args.bundle, verify=False)
    m = manifest_v2(bundle)
    print(describe_bundle(m, schema=bundle.manifest.schema_version))
    return 0


def describe_bundle(m, schema: int = 2) -> str:  # noqa: ANN001 - a BundleManifestV2
    """A few lines saying what a bundle is; random-weight policies are labelled as such."""
    weights = "RANDOM WEIGHTS (a real architecture, not a trained policy)" if m.policy.random_weights else "trained"
    tok = m.language.tokenizer
    tokenizer = "word list" if tok.kind == "words" else (
        "tokenizer.json" + (" (STAND-IN tokenizer trained here, not the checkpoint's)" if tok.stand_in else ""))
    views = ", ".join(f"{v.name} {v.width}×{v.height} ({v.resize})" for v in m.observation.cameras)
    sampler = m.sampler.kind + (f", {m.sampler.steps} steps" if hasattr(m.sampler, "steps") else
                                f", {m.sampler.num_inference_steps} steps" if hasattr(m.sampler, "num_inference_steps")
                                else "")
    end = m.step_end
    rules = [f"done action '{end.done_action}'" if end.done_action else "",
             f"{end.max_chunks} chunks" if end.max_chunks else "", f"{end.max_seconds:g} s" if end.max_seconds else "",
             f"success detector '{end.success.graph}'" if end.success else "", "external check" if end.external else ""]
    return "\n".join([
        f"{m.name} {m.version} (schema {schema}): {m.policy.type}, {m.policy.parameters:,} parameters, {weights}",
        f"  cameras: {views}; observation history {m.observation.history}",
        f"  state: {', '.join(m.state_names)}",
        f"  actions: {', '.join(m.action_names)}; {m.horizon} per chunk at {m.control_rate_hz:g} Hz",
        f"  sampler: {sampler}; language: {tokenizer}",
        f"  step ends on: {', '.join(r for r in rules if r)}",
        f"  variants: {', '.join(m.variants)}",
    ])
