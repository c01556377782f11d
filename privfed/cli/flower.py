"""``privfed flower app | certs | identities | worker | loopback | simulate``: privfed on Flower from the CLI.

``app`` writes the Flower app folder for a config (what ``flwr run`` ships); ``certs`` makes TLS files for a
SuperLink; ``identities`` the clients' Ed25519 keys and directory for secagg's consistency check; ``worker`` a
warm node worker; ``loopback`` runs a whole TLS deployment on this machine (a SuperLink and one SuperNode per
client on 127.0.0.1) and ``simulate`` a Flower simulation (Ray, one virtual SuperNode per client), printing the
same tables as ``privfed run``. Nothing here imports flwr before the config is valid.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from privfed.cli.common import EXIT_CODES, print_run, printed_config, violation
from privfed.errors import ConfigError, PrivfedError

NAME = "flower"


def add_parser(sub, common: argparse.ArgumentParser, configured: argparse.ArgumentParser) -> None:
    """``privfed flower ...``; ``common``: every command's options, ``configured``: a config's (privfed.cli.common)."""
    flower = sub.add_parser("flower", help="run privfed on Flower: app folders, TLS files, a loopback deployment, "
                                           "a Flower simulation")
    commands = flower.add_subparsers(dest="flower_command", required=True)

    def audit_options(p: argparse.ArgumentParser) -> None:
        from privfed.cli.audit import add_audit_options

        p.add_argument("--audit", action="store_true", help="an audit run (privfed audit over Flower): the audited "
                                                            "client's node, started with node-config audit=true, "
                                                            "carries the canaries and reports its update")
        add_audit_options(p.add_argument_group("audit (with --audit)"))

    app = commands.add_parser("app", parents=[common, configured],
                              help="write the Flower app folder for a config (then: flwr run FOLDER ...)")
    app.add_argument("--out", type=Path, help="the app folder to write (required)")
    app.add_argument("--results", type=Path, help="where the ServerApp writes the run (default: FOLDER/runs/<name>)")
    audit_options(app)
    certs = commands.add_parser("certs", parents=[common], help="a CA and a SuperLink certificate signed by it (TLS)")
    certs.add_argument("folder", type=Path)
    certs.add_argument("--host", action="append", default=[], help="the SuperLink's IP address or DNS name "
                                                                   "(repeatable; default: 127.0.0.1 and localhost)")
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates (default 365)")
    certs.add_argument("--overwrite", action="store_true", help="replace an existing CA (nodes that trust the old "
                                                                "one must get the new ca.pem)")
    identities = commands.add_parser("identities", parents=[common],
                                     help="an Ed25519 identity key per client and the directory of their public keys "
                                          "(aggregation.consistency_check)")
    identities.add_argument("folder", type=Path)
    identities.add_argument("--clients", type=int, required=True, help="how many clients (ids 0..N-1)")
    identities.add_argument("--overwrite", action="store_true", help="replace existing keys and directory")
    worker = commands.add_parser("worker", parents=[common],
                                 help="a warm node worker for a SuperNode started with --isolation process: one "
                                      "process serves all its messages (the model stays loaded), restarted if it dies")
    worker.add_argument("--runtime-api", default="127.0.0.1:9094", help="the SuperNode's Runtime API, on this "
                                                                        "machine (flower-supernode --port; default "
                                                                        "127.0.0.1:9094)")
    worker.add_argument("--secret-file", type=Path, required=True, help="the file given to flower-supernode "
                                                                        "--superexec-auth-secret-file")
    for name, text in (("loopback", "a SuperLink and one SuperNode per client on 127.0.0.1, TLS, then flwr run"),
                       ("simulate", "Flower's simulation runtime (Ray): one virtual SuperNode per client")):
        p = commands.add_parser(name, parents=[common, configured], epilog=EXIT_CODES, help=text)
        p.add_argument("--work", type=Path, help="folder for the app, logs, ledgers and results (default: a new "
                                                 "one under runs/)")
        p.add_argument("--timeout", type=float, default=3600.0, help="seconds the whole run may take")
        if name == "loopback":
            audit_options(p)
            p.add_argument("--insecure", action="store_true", help="no TLS (loopback only)")
            p.add_argument("--node-auth", action="store_true", help="SuperNode authentication: the SuperLink "
                                                                    "admits only the nodes whose keys were "
                                                                    "registered (flwr supernode register)")
            p.add_argument("--stock-processes", action="store_true", help="Flower's own ClientApp process per "
                                                                          "message instead of privfed's warm node "
                                                                          "workers (slower: each message reloads "
                                                                          "the model)")
        else:
            p.add_argument("--num-cpus", type=int, default=1, help="CPUs per ClientApp call")
            p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per ClientApp call (fractions share one)")


def _require_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError("flower", "Flower is not installed: pip install 'privfed[flower]' (or ./install.sh "
                                    "--flower)") from None


def _num_nodes(cfg) -> int:
    if cfg.partition.num_clients == 0:
        raise ConfigError("partition.num_clients", "one SuperNode serves one client: give the number of clients")
    return cfg.partition.num_clients


def command(args: argparse.Namespace) -> int:
    if args.flower_command == "certs":
        _require_flower()
        from privfed.engines.flower.certificates import make_tls_files

        if args.days < 1:
            raise ConfigError("--days", f"must be >= 1, got {args.days}")
        try:
            files = make_tls_files(args.folder, tuple(args.host) or ("127.0.0.1", "localhost"), args.days,
                                   args.overwrite)
        except FileExistsError as err:
            raise ConfigError(str(args.folder), f"{err}; pass --overwrite to replace it") from None
        print(f"wrote {files.ca_certificate} (give it to every SuperNode and to flwr), {files.server_certificate} "
              f"and {files.server_key} (the SuperLink's; the key never leaves its machine)")
        return 0
    if args.flower_command == "identities":
        from privfed.secure.identities import key_file, write_identities

        try:
            directory = write_identities(args.folder, args.clients, args.overwrite)
        except FileExistsError as err:
            raise ConfigError(str(args.folder), f"{err}; pass --overwrite to replace the keys (every node then needs "
                                                "its new key and the new directory)") from None
        print(f"wrote {directory} (give it to every SuperNode) and {key_file(args.folder, 0).name} ... "
              f"{key_file(args.folder, args.clients - 1).name} (each to its client's SuperNode only, as "
              "--node-config \"identity-key='...' directory='...'\")")
        return 0
    if args.flower_command == "worker":
        _require_flower()
        from privfed.engines.flower.worker import WorkerSettings, supervise

        settings = WorkerSettings(args.runtime_api, args.secret_file)
        print(f"privfed worker for the SuperNode at {args.runtime_api}: serving its messages until stopped (Ctrl-C)")
        return supervise(settings)
    from privfed.config import load_config

    cfg = load_config(args.config, args.overrides)
    audit = _audit_settings(args)
    if audit is not None:
        from privfed.audit.settings import audited_config

        cfg = audited_config(cfg, audit)  # what the server and every node train
    if printed_config(args, cfg):
        return 0
    _require_flower()
    from privfed.engines.flower.app_folder import write_app_folder
    from privfed.engines.flower.apps import check_flower_support
    from privfed.engines.flower.wire import fingerprint

    check_flower_support(cfg)
    if audit is not None:
        from privfed.audit.scoring import check_auditable

        check_auditable(cfg)
    if args.flower_command == "app":
        if args.out is None:
            raise ConfigError("--out", "give the app folder to write")
        folder = write_app_folder(cfg, args.out, args.results, audit)
        print(f"wrote {folder}/pyproject.toml: privfed's ServerApp and ClientApp with config {cfg.name} "
              f"(fingerprint {fingerprint(cfg)})" + ("" if audit is None else
                                                     f"; an audit of client {audit.client}, whose SuperNode needs "
                                                     "--node-config \"... audit=true\""))
        print(f"run it: flwr run {folder} <superlink connection> --stream")
        return 0
    return _run_locally(cfg, args, audit)


def _audit_settings(args: argparse.Namespace):
    """The audit's settings with --audit (None without; audit flags without --audit are refused, never ignored)."""
    if not hasattr(args, "audit"):  # simulate: the virtual nodes have no node config to agree to an audit
        return None
    from privfed.audit.settings import AuditSettings
    from privfed.cli.audit import settings_from

    settings = settings_from(args)
    if not args.audit:
        if settings != AuditSettings():
            raise ConfigError("--audit", "audit options were given without --audit")
        return None
    return settings


def _run_locally(cfg, args: argparse.Namespace, audit=None) -> int:
    from privfed.config import Aggregation
    from privfed.config import AttackKind as Attack
    from privfed.engines.flower.app_folder import write_app_folder
    from privfed.engines.flower.loopback import LoopbackDeployment, SimulationOptions
    from privfed.results import RESULTS, unused_run_dir
    from privfed.run_result import read_results

    nodes = _num_nodes(cfg)
    if args.flower_command == "simulate":
        from privfed.engines.flower.apps import check_flower_simulation

        check_flower_simulation(cfg)
    work = (args.work or Path(tempfile.mkdtemp(prefix=f"{cfg.name}-flower-", dir=_runs()))).resolve()
    out = unused_run_dir(work / "results")
    paillier_pair = None
    if args.flower_command == "loopback" and cfg.aggregation.method is Aggregation.PAILLIER:
        cfg, paillier_pair = _split_paillier_key(cfg, work / "paillier")
    app = write_app_folder(cfg, work / "app", out, audit)
    if args.flower_command == "loopback":
        # one machine, as a test: reproducible seeds, so the run equals `privfed run` with the same config
        node_configs = [{"partition-id": i, "ledger": str((work / f"node-{i}" / "ledger.jsonl").resolve()),
                         "reproducible": True} for i in range(nodes)]
        if cfg.aggregation.consistency_check:  # one machine: the keys are made here, each node given its own
            from privfed.secure.identities import key_file, write_identities

            directory = write_identities(work / "identities", nodes, overwrite=True).resolve()
            for i, node in enumerate(node_configs):
                node.update({"identity-key": str(key_file(directory.parent, i)), "directory": str(directory)})
        for i in cfg.attack.clients if cfg.attack.kind is not Attack.NONE else ():  # an attack, on this machine
            node_configs[i]["simulate-attack"] = True
        if audit is not None:  # the researcher's own node carries the audited client, its ledger for the run only
            if not 0 <= audit.client < nodes:
                raise ConfigError("--client", f"the federation has clients 0..{nodes - 1}, got {audit.client}")
            node_configs[audit.client]["audit"] = True
            del node_configs[audit.client]["ledger"]
        if paillier_pair is not None:  # the server's config names the public key; each node gets the pair
            for node in node_configs:
                node["paillier-key"] = str(paillier_pair)
        if args.node_auth and args.insecure:
            raise ConfigError("--node-auth", "SuperNode authentication needs TLS: drop --insecure")
        deployment = LoopbackDeployment(work / "deployment", node_configs, tls=not args.insecure,
                                        warm=not args.stock_processes, node_auth=args.node_auth)
        what = (f"a SuperLink and {nodes} SuperNodes on 127.0.0.1 ({'insecure' if args.insecure else 'TLS'}"
                f"{', registered nodes only' if args.node_auth else ''}, "
                f"{'a ClientApp process per message' if args.stock_processes else 'a warm worker per node'})")
    else:
        deployment = LoopbackDeployment(work / "deployment", [], tls=False,
                                        simulation=SimulationOptions(nodes, args.num_cpus, args.num_gpus))
        what = f"Flower's simulation runtime with {nodes} virtual SuperNodes"
    print(f"privfed on Flower: {what}; logs in {deployment.logs}")
    with deployment:
        outcome = deployment.run(app, args.timeout)
    if not outcome.completed or not (out / RESULTS).exists():
        raise PrivfedError(f"the Flower run ended {outcome.status} (flwr exit {outcome.returncode}); the ServerApp's "
                           f"log: {outcome.log}")
    print(f"the run took {outcome.seconds:.0f} s (flwr run, start to end)")
    print_run(cfg.name, read_results(out), out)
    if audit is not None:
        from privfed.audit.report import AUDIT_TABLE, read_report

        if not (out / AUDIT_TABLE).exists():
            raise PrivfedError(f"the run finished but wrote no audit (the ServerApp's log: {outcome.log})")
        print()
        print((out / AUDIT_TABLE).read_text())
        if read_report(out)["violation"]:
            return violation("an audit contradicts the accountant's ε (see the rows marked VIOLATION)")
    return 0


def _split_paillier_key(cfg, folder: Path):
    """One machine: the config's key pair (or a new one) for the nodes, and the config the server runs, whose
    aggregation.key_file is the pair's public key only."""
    from dataclasses import replace

    from privfed.secure.paillier_keys import PaillierKey, public_key_path

    if cfg.aggregation.key_file:
        pair_path = Path(cfg.aggregation.key_file).resolve()
        pair = PaillierKey.load(pair_path)
        if not pair.has_private:
            raise ConfigError("aggregation.key_file", f"{pair_path} holds only a public key: privfed flower loopback "
                                                      "needs the key pair, which it gives to the nodes")
    else:
        pair = PaillierKey.generate(cfg.aggregation.key_bits)
        pair_path = pair.save(folder / "key.json").resolve()
    public = pair.public().save(folder / public_key_path(pair_path).name).resolve()
    return replace(cfg, aggregation=replace(cfg.aggregation, key_file=str(public))), pair_path


def _runs() -> Path:
    path = Path("runs")
    path.mkdir(exist_ok=True)
    return path
