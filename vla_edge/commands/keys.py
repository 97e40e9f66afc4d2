"""``vla-edge keys``: make, list and authorise the CURVE keys of the action stream."""

from __future__ import annotations

import argparse
from pathlib import Path

from vla_edge.keys import authorize_client, authorized_clients, generate_keys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="CURVE keys for the daemon ⇄ motor-controller stream")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    generate = actions.add_parser("generate", help="make the daemon keypair and one controller keypair")
    generate.add_argument("--dir", type=Path, required=True, help="keys directory (e.g. /etc/vla-edge/keys)")
    generate.add_argument("--client-name", default="client", help="file name of the controller keypair")
    generate.add_argument("--overwrite", action="store_true", help="replace existing keys (old ones stop working)")
    generate.set_defaults(func=_generate)

    listing = actions.add_parser("list", help="list the controller public keys the daemon accepts")
    listing.add_argument("--dir", type=Path, required=True)
    listing.set_defaults(func=_list)

    authorize = actions.add_parser("authorize", help="accept another controller's public key file")
    authorize.add_argument("--dir", type=Path, required=True)
    authorize.add_argument("public_key", type=Path, help="the controller's .key file (public, never key_secret)")
    authorize.set_defaults(func=_authorize)


def _generate(args: argparse.Namespace) -> int:
    made = generate_keys(args.dir, client_name=args.client_name, overwrite=args.overwrite)
    print(f"daemon public key:      {made.server_public}  (copy to each controller)")
    print(f"daemon secret key:      {made.server_secret}  (keep on the daemon's board only)")
    print(f"controller public key:  {made.client_public}  (authorised in {made.authorized_dir})")
    print(f"controller secret key:  {made.client_secret}  (copy to the controller only)")
    return 0


def _list(args: argparse.Namespace) -> int:
    keys = authorized_clients(args.dir)
    if not keys:
        print(f"no authorised controller keys in {args.dir}")
        return 1
    for name, public in keys.items():
        print(f"{name}\t{public.decode('ascii')}")
    return 0


def _authorize(args: argparse.Namespace) -> int:
    target = authorize_client(args.dir, args.public_key)
    print(f"authorised {args.public_key} as {target}")
    return 0
