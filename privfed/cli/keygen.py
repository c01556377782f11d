"""``privfed keygen``: a Paillier key pair for the clients and its public half for the server."""
from __future__ import annotations

import argparse
from pathlib import Path

from privfed.errors import ConfigError

NAME = "keygen"


def add_parser(sub, common: argparse.ArgumentParser, configured: argparse.ArgumentParser) -> None:
    keygen = sub.add_parser("keygen", parents=[common],
                            help="write a Paillier key pair for aggregation.key_file (the clients' shared secret: give "
                                 "it to the clients, never to the server) and its public key KEY.pub (the server's, "
                                 "over Flower)")
    keygen.add_argument("path", type=Path, help="key file to write (readable by its owner only)")
    keygen.add_argument("--bits", type=int, default=3072, help="modulus bits: 2048, 3072 (default) or 4096")
    keygen.add_argument("--overwrite", action="store_true", help="replace an existing key file")


def command(args: argparse.Namespace) -> int:
    from privfed.config import PAILLIER_KEY_BITS
    from privfed.secure.paillier_keys import PaillierKey, public_key_path, security_note

    if args.bits not in PAILLIER_KEY_BITS:
        raise ConfigError("--bits", f"must be one of {', '.join(map(str, PAILLIER_KEY_BITS))}, got {args.bits}")
    if args.path.exists() and not args.overwrite:
        raise ConfigError(str(args.path), "exists; pass --overwrite to replace it (runs that used it cannot be "
                                          "decrypted with a new key)")
    key = PaillierKey.generate(args.bits)
    key.save(args.path)
    public = key.public().save(public_key_path(args.path))
    bits = "" if key.bits == 3072 else f" --set aggregation.key_bits={key.bits}"
    print(f"wrote {args.path}: {key.bits}-bit Paillier key pair {key.fingerprint} ({security_note(key.bits)}), and "
          f"its public key {public}")
    print(f"use it with: --set aggregation=paillier --set aggregation.key_file={args.path}{bits}")
    print(f"over Flower: the server's config takes aggregation.key_file={public}; each node gets {args.path} "
          f"as --node-config paillier-key")
    return 0
