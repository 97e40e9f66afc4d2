"""CURVE key files for the action stream, in pyzmq's certificate format (``zmq.auth``).

Layout of a keys directory (made by ``vla-edge keys generate --dir DIR``)::

    DIR/server.key              daemon public key   (copy to every controller)
    DIR/server.key_secret       daemon secret key   (daemon only, mode 0600)
    DIR/client.key              controller public key
    DIR/client.key_secret       controller secret key (controller only, mode 0600)
    DIR/authorized_clients/*.key  public keys the daemon accepts; anything else is refused
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from vla_edge.wire import StreamError

SERVER_NAME = "server"
CLIENT_NAME = "client"
AUTHORIZED_DIR = "authorized_clients"


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


@dataclass(frozen=True)
class GeneratedKeys:
    server_public: Path
    server_secret: Path
    client_public: Path
    client_secret: Path
    authorized_dir: Path


def generate_keys(keys_dir: Path, *, client_name: str = CLIENT_NAME, overwrite: bool = False) -> GeneratedKeys:
    """Make the daemon keypair (unless present) and one controller keypair, and authorise that controller."""
    if not zmq.has("curve"):
        raise StreamError("this libzmq was built without CURVE support; install pyzmq wheels from PyPI")
    if not client_name.replace("-", "").replace("_", "").isalnum():
        raise StreamError(f"client name {client_name!r} must be letters, digits, '-' or '_'")
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    authorized = keys_dir / AUTHORIZED_DIR
    authorized.mkdir(exist_ok=True)
    server_public = keys_dir / f"{SERVER_NAME}.key"
    client_public = keys_dir / f"{client_name}.key"
    if client_public.exists() and not overwrite:
        raise StreamError(f"{client_public} already exists; pass --overwrite to replace it (old key stops working)")
    if overwrite or not server_public.exists():
        zmq.auth.create_certificates(str(keys_dir), SERVER_NAME)
    zmq.auth.create_certificates(str(keys_dir), client_name)
    for secret in (keys_dir / f"{SERVER_NAME}.key_secret", keys_dir / f"{client_name}.key_secret"):
        os.chmod(secret, 0o600)
    shutil.copyfile(client_public, authorized / client_public.name)
    return GeneratedKeys(
        server_public=server_public,
        server_secret=keys_dir / f"{SERVER_NAME}.key_secret",
        client_public=client_public,
        client_secret=keys_dir / f"{client_name}.key_secret",
        authorized_dir=authorized,
    )


def authorize_client(keys_dir: Path, public_key_file: Path) -> Path:
    """Copy a controller's public key file into the authorised set. Refuses a secret key file."""
    public_key_file = Path(public_key_file)
    public, secret = _load(public_key_file)
    if secret is not None:
        raise StreamError(f"{public_key_file} holds a SECRET key; authorise the public .key file instead")
    target = Path(keys_dir) / AUTHORIZED_DIR / (public_key_file.stem + ".key")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(public_key_file, target)
    return target


def authorized_clients(keys_dir: Path) -> dict[str, bytes]:
    """File name → public key (Z85) of every authorised controller."""
    folder = Path(keys_dir) / AUTHORIZED_DIR
    if not folder.is_dir():
        return {}
    return {path.name: _load(path)[0] for path in sorted(folder.glob("*.key"))}


def server_keypair(keys_dir: Path) -> KeyPair:
    return _load_pair(Path(keys_dir) / f"{SERVER_NAME}.key_secret", "the daemon")


def client_keypair(keys_dir: Path, client_name: str = CLIENT_NAME) -> KeyPair:
    return _load_pair(Path(keys_dir) / f"{client_name}.key_secret", "this controller")


def server_public_key(keys_dir: Path) -> bytes:
    path = Path(keys_dir) / f"{SERVER_NAME}.key"
    return _load(path)[0]


def authorized_dir(keys_dir: Path) -> Path:
    folder = Path(keys_dir) / AUTHORIZED_DIR
    if not folder.is_dir() or not any(folder.glob("*.key")):
        raise StreamError(
            f"no authorised controller keys in {folder}; run `vla-edge keys generate --dir {keys_dir}` "
            f"or `vla-edge keys authorize --dir {keys_dir} CLIENT.key`"
        )
    return folder


def _load_pair(secret_file: Path, who: str) -> KeyPair:
    public, secret = _load(secret_file)
    if secret is None:
        raise StreamError(f"{secret_file} has no secret key for {who}; regenerate with `vla-edge keys generate`")
    return KeyPair(public=public, secret=secret)


def _load(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise StreamError(f"key file {path} not found; make keys with `vla-edge keys generate --dir {path.parent}`")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise StreamError(f"{path} is not a valid CURVE certificate file: {exc}") from None
    if public is None or len(public) != 40:
        raise StreamError(f"{path} does not hold a Z85 CURVE public key")
    return public, secret


def make_curve_server(sock: zmq.Socket, keys_dir: Path) -> None:
    """The daemon's sockets are CURVE servers; which clients may connect is decided by the authenticator."""
    pair = server_keypair(keys_dir)
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True


def make_curve_client(sock: zmq.Socket, keys_dir: Path, client_name: str = CLIENT_NAME) -> None:
    pair = client_keypair(keys_dir, client_name)
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_serverkey = server_public_key(keys_dir)
