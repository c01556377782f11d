"""Long-term Ed25519 identities for SecAgg's consistency check when clients live on other machines.

The consistency check (Bonawitz et al.'s signed-survivor round) assumes a PKI: every client signs with its own
identity key and knows every other client's public key. In process the back-end makes both; over Flower each node
is given its private key file and the directory of public keys out of band — what ``privfed flower identities``
writes: ``client-<id>.pem`` (PKCS#8, readable by its owner only; it goes to that client's machine and nowhere else)
and ``directory.json`` (client id -> public key, hex; every node gets the same copy). Keys and signatures are the
``cryptography`` package's.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfed.errors import ConfigError

DIRECTORY = "directory.json"


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_file(folder: Path, client: int) -> Path:
    return Path(folder) / f"client-{client}.pem"


def write_identities(folder: Path, clients: int, overwrite: bool = False) -> Path:
    """A fresh key for each of ``clients`` clients (ids 0..clients-1) and their directory; returns the directory
    file. Refuses (FileExistsError) to replace any existing key or directory unless ``overwrite``. Each file is
    written under a temporary name and moved into place, the directory last, so an interrupted run never leaves a
    directory that names keys other than those beside it."""
    folder = Path(folder)
    if clients < 2:
        raise ConfigError("--clients", f"secure aggregation needs at least 2 clients, got {clients}")
    taken = [p for p in (folder / DIRECTORY, *(key_file(folder, c) for c in range(clients))) if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]} exists")
    folder.mkdir(parents=True, exist_ok=True)
    directory = {}
    for client in range(clients):
        key = Ed25519PrivateKey.generate()
        _write_private(key_file(folder, client), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        directory[str(client)] = public_bytes(key).hex()
    temporary = folder / f".{DIRECTORY}.{os.getpid()}"
    temporary.write_text(json.dumps(directory, indent=1) + "\n")
    os.replace(temporary, folder / DIRECTORY)
    return folder / DIRECTORY


def _write_private(path: Path, data: bytes) -> None:
    """``data`` to ``path``, readable by its owner only from the first byte (a fresh temporary file, then moved)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def load_identity(path: Path, client: int, directory: dict[int, bytes]) -> Ed25519PrivateKey:
    """Client ``client``'s private key from ``path``, checked against its entry in ``directory``."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError("node-config", f"identity-key {path}: not a readable PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("node-config", f"identity-key {path}: not an Ed25519 key")
    if directory.get(client) != public_bytes(key):
        raise ConfigError("node-config", f"identity-key {path} is not client {client}'s key in the directory")
    return key


def directory_digest(directory: dict[int, bytes]) -> str:
    """SHA-256 of a directory (hex): nodes that were given different directories would fail every peer's
    signature check, so the server compares these at the hello and stops the run before it starts."""
    canonical = json.dumps({str(c): directory[c].hex() for c in sorted(directory)}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_directory(path: Path) -> dict[int, bytes]:
    """The directory of public keys: client id -> 32 raw bytes."""
    try:
        raw = json.loads(Path(path).read_text())
        directory = {int(client): bytes.fromhex(public) for client, public in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ConfigError("node-config", f"directory {path}: not a directory of public keys ({err})") from None
    if any(len(public) != 32 for public in directory.values()):
        raise ConfigError("node-config", f"directory {path}: every public key must be 32 bytes (Ed25519)")
    return directory
