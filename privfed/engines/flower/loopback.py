"""A Flower deployment on one machine: a SuperLink and one SuperNode per client on 127.0.0.1, TLS by default.

What the Flower how-to's "deployment on one machine" runs (docs/how-to/flower.md), and what the deployment test
and ``benchmarks/flower.py`` use.
Every process starts in its own session; :meth:`LoopbackDeployment.close` kills each session and every descendant
(SuperExec and ClientApp processes start their own), whatever happened, with bounded waits throughout.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from privfed.engines.flower.certificates import TlsFiles, make_tls_files
from privfed.engines.flower.worker import READY, write_secret
from privfed.errors import PrivfedError

CONNECTION = "privfed-loopback"


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally` and `with`, which close the deployment


class DeploymentError(PrivfedError):
    """A Flower process did not start, or a run did not finish, in time (the logs say why)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config_text(values: dict) -> str:
    """``--node-config``'s syntax: key=value pairs, TOML values (strings quoted, booleans lower case)."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, (str, bool)) else v}" for k, v in values.items())


@dataclass(frozen=True)
class SimulationOptions:
    """Flower's Ray simulation runtime instead of SuperNodes: ``num_supernodes`` virtual nodes (node_config
    partition-id 0..n-1), each ClientApp call given ``num_cpus`` CPUs and ``num_gpus`` (fractional) GPUs."""

    num_supernodes: int
    num_cpus: int = 1
    num_gpus: float = 0.0

    def federation_config(self) -> str:
        return (f"num-supernodes={self.num_supernodes} client-resources-num-cpus={self.num_cpus} "
                f"client-resources-num-gpus={self.num_gpus}")


@dataclass(frozen=True)
class RunOutcome:
    returncode: int
    seconds: float
    run_id: str | None
    log: Path
    status: str  # the SuperLink's: finished:completed, finished:failed, ...

    @property
    def completed(self) -> bool:
        return self.returncode == 0 and self.status == "finished:completed"


class LoopbackDeployment:
    """``with LoopbackDeployment(work, node_configs) as d: d.run(app_folder)``; with ``simulation``, a SuperLink
    in simulation mode and no SuperNodes.

    ``node_configs[i]`` is SuperNode i's --node-config (e.g. {"partition-id": 0, "ledger": "..."}). ``tls``: a CA
    and a server certificate for 127.0.0.1 are made in ``work``/tls; False runs --insecure (never across machines).
    ``node_auth``: the SuperLink admits registered SuperNodes only (``--enable-supernode-auth``): each node gets
    an ECDSA P-384 key, registered with ``flwr supernode register`` before it starts.
    ``warm``: each SuperNode runs with ``--isolation process`` and a supervised privfed worker
    (:mod:`privfed.engines.flower.worker`) that serves all its messages in one process, authenticated with a
    secret of its own; False: Flower's stock ClientApp process per message.
    """

    def __init__(self, work: Path, node_configs: list[dict], *, tls: bool = True, start_timeout: float = 120.0,
                 simulation: SimulationOptions | None = None, warm: bool = True, node_auth: bool = False):
        self.work, self.node_configs, self.tls, self.start_timeout = work.resolve(), node_configs, tls, start_timeout
        self.simulation, self.warm, self.node_auth = simulation, warm, node_auth
        if node_auth and not tls:
            raise ValueError("SuperNode authentication runs over TLS only")
        if simulation is not None and (node_configs or tls):
            raise ValueError("a simulation runs virtual nodes on an insecure loopback SuperLink: no node_configs, "
                             "no tls")
        self.logs = self.work / "logs"  # absolute: every process runs in work, flwr and the nodes read these
        self.flwr_home = self.work / "flwr-home"
        self.port = 0
        self.processes: dict[str, subprocess.Popen] = {}
        self.runtime_ports: dict[int, int] = {}  # SuperNode i -> its Runtime API port (127.0.0.1)
        self._started: dict[str, float] = {}
        self._previous_sigterm = None
        self.tls_files: TlsFiles | None = None

    # ------------------------------------------------------------ processes

    def _env(self, flwr_home: Path) -> dict[str, str]:
        """This Python's console scripts come first on PATH: Flower's own (flower-superlink, flwr, and the
        flwr-serverapp/flwr-clientapp processes that the SuperLink and the SuperNodes start by name) lie beside the
        interpreter, which a virtual environment used without activation (``.venv/bin/privfed``) leaves off PATH."""
        path = os.pathsep.join(p for p in (sysconfig.get_path("scripts"), os.environ.get("PATH", "")) if p)
        return {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PYTHONUNBUFFERED": "1"}

    def _node_env(self, flwr_home: Path) -> dict[str, str]:
        """A node's processes share this machine's cores with the other nodes: torch gets cores / nodes threads
        each (unless OMP_NUM_THREADS is set), so the nodes training at once do not oversubscribe the CPU."""
        threads = max(1, (os.cpu_count() or 1) // max(1, len(self.node_configs)))
        return {"OMP_NUM_THREADS": str(threads), **self._env(flwr_home)}

    def _spawn(self, name: str, command: list[str], flwr_home: Path, node: bool = False) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        env = self._node_env(flwr_home) if node else self._env(flwr_home)
        try:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.work)
        except FileNotFoundError:
            raise DeploymentError(f"{command[0]} is not installed: pip install 'privfed[flower]' (or ./install.sh "
                                  "--flower)") from None
        finally:
            log.close()
        self.processes[name] = process
        return process

    def _wait(self, ready, what: str, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            for name, process in self.processes.items():
                if process.poll() is not None and not name.startswith("flwr-run"):
                    raise DeploymentError(f"{name} exited with {process.returncode} while waiting for {what}; see "
                                          f"{self.logs / (name + '.log')}")
            if ready():
                return time.monotonic() - start
            time.sleep(0.2)
        raise DeploymentError(f"{what} not ready after {timeout:g} s; logs in {self.logs}")

    def _healthy(self) -> bool:
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=str(self.tls_files.ca_certificate)) if self.tls_files else None
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health", context=context,
                                        timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _node_ready(self, i: int) -> bool:
        path = self.logs / f"supernode-{i}.log"
        return path.exists() and "SuperNode ID:" in path.read_text(errors="replace")

    def start(self) -> LoopbackDeployment:
        atexit.register(self.close)  # an interpreter that exits (or is sent SIGTERM, below) still cleans up
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        security: list[str] = ["--insecure"]
        if self.tls:
            self.tls_files = make_tls_files(self.work / "tls")
            security = ["--ssl-ca-certfile", str(self.tls_files.ca_certificate),
                        "--ssl-certfile", str(self.tls_files.server_certificate),
                        "--ssl-keyfile", str(self.tls_files.server_key)]
        connection = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n' \
                     f'address = "127.0.0.1:{self.port}"\n'
        connection += f'root-certificates = "{self.tls_files.ca_certificate}"\n' if self.tls_files else \
            "insecure = true\n"
        (self.flwr_home / "config.toml").write_text(connection)
        mode = ["--simulation"] if self.simulation else []
        mode += ["--enable-supernode-auth"] if self.node_auth else []
        self._spawn("superlink", ["flower-superlink", *security, *mode, "--disable-runtime-dependency-installation",
                                  "--database", str(self.work / "superlink.db"), "--host", "127.0.0.1",
                                  "--port", str(self.port)], self.flwr_home)
        self._wait(self._healthy, "the SuperLink", self.start_timeout)
        for i, node_config in enumerate(self.node_configs):
            self.start_node(i, node_config)
        for i in range(len(self.node_configs)):
            self._wait(lambda i=i: self._node_ready(i), f"SuperNode {i}", self.start_timeout)
            if self.warm:
                self._wait(lambda i=i: self._worker_ready(i), f"the privfed worker of SuperNode {i}",
                           self.start_timeout)
        return self

    def _worker_ready(self, i: int) -> bool:
        path = self.logs / f"worker-{i}.log"
        return path.exists() and READY in path.read_text(errors="replace")

    def node_key(self, i: int, register: bool = True) -> Path:
        """SuperNode ``i``'s authentication key (OpenSSH ECDSA P-384, as ``ssh-keygen -t ecdsa -b 384`` makes),
        its public half registered with the SuperLink unless ``register`` is False."""
        private = self.work / f"node-{i}-home" / "node-auth"
        private.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()))
        public = private.with_name("node-auth.pub")
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH))
        if register:
            done = subprocess.run(["flwr", "supernode", "register", str(public), CONNECTION],
                                  env=self._env(self.flwr_home), capture_output=True, text=True, timeout=60,
                                  check=False, start_new_session=True)
            if done.returncode != 0:
                raise DeploymentError(f"flwr supernode register failed for SuperNode {i}: "
                                      f"{(done.stdout + done.stderr).strip()[-500:]}")
        return private

    def start_node(self, i: int, node_config: dict, *, registered: bool = True) -> None:
        """SuperNode ``i`` (its own app cache, its own Runtime API port), and its warm worker. With SuperNode
        authentication its key is made (and, if ``registered``, registered) first."""
        security = ["--root-certificates", str(self.tls_files.ca_certificate)] if self.tls_files else ["--insecure"]
        if self.node_auth:
            security += ["--auth-supernode-private-key", str(self.node_key(i, registered))]
        runtime_port = self.runtime_ports[i] = free_port()
        isolation: list[str] = []
        if self.warm:
            secret = write_secret(self.work / f"node-{i}-home" / "superexec.secret")
            isolation = ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
        self._spawn(f"supernode-{i}", ["flower-supernode", *security, "--superlink", f"127.0.0.1:{self.port}",
                                       "--host", "127.0.0.1", "--port", str(runtime_port), *isolation,
                                       "--node-config", node_config_text(node_config)],
                    self.work / f"node-{i}-home", node=True)
        if self.warm:
            self._spawn(f"worker-{i}", [sys.executable, "-m", "privfed.engines.flower.worker", "--supervise",
                                        "--runtime-api", f"127.0.0.1:{runtime_port}", "--secret-file", str(secret)],
                        self.work / f"node-{i}-home", node=True)

    def kill_node(self, i: int) -> None:
        """SuperNode ``i`` and its worker (or its ClientApp processes), at once (SIGKILL)."""
        processes = [self.processes[name] for name in (f"supernode-{i}", f"worker-{i}") if name in self.processes]
        self._kill([p for p in processes if p.poll() is None], signal.SIGKILL, grace=5.0)

    def worker_processes(self, i: int) -> tuple[psutil.Process, psutil.Process]:
        """SuperNode ``i``'s worker supervisor and the one worker it runs now."""
        supervisor = psutil.Process(self.processes[f"worker-{i}"].pid)
        children = supervisor.children()
        if len(children) != 1:
            raise DeploymentError(f"SuperNode {i}'s worker supervisor runs {len(children)} workers, not 1; see "
                                  f"{self.logs / f'worker-{i}.log'}")
        return supervisor, children[0]

    @staticmethod
    def crash_paused(supervisor: psutil.Process, worker: psutil.Process) -> None:
        """Freeze a worker and its supervisor, the worker first (processes from :meth:`worker_processes`: nothing is
        looked up between the call and the signals, and psutil refuses to signal a pid that another process took
        meanwhile), then kill the worker: the message its SuperNode holds goes unanswered, whether the worker had
        claimed it or not, and no new worker starts until :meth:`resume_supervisor`. (A worker killed just before it
        claimed a message would otherwise be replaced by one that answers it.)"""
        worker.suspend()
        supervisor.suspend()
        worker.kill()

    @staticmethod
    def resume_supervisor(supervisor: psutil.Process) -> None:
        """Undo :meth:`crash_paused`'s freeze: the supervisor reaps the killed worker and starts a new one."""
        supervisor.resume()

    # ------------------------------------------------------------ runs

    def start_run(self, app_folder: Path, run_config: str = "") -> str:
        """Start ``flwr run APP_FOLDER --stream`` in the background; returns its name for :meth:`wait_run`."""
        name = f"flwr-run-{sum(n.startswith('flwr-run') for n in self.processes)}"
        command = ["flwr", "run", str(app_folder.resolve()), CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", run_config]
        if self.simulation is not None:
            command += ["--federation-config", self.simulation.federation_config()]
        self._started[name] = time.monotonic()
        self._spawn(name, command, self.flwr_home)
        return name

    def wait_run(self, name: str, timeout: float) -> RunOutcome:
        """Wait for a run started by :meth:`start_run` (DeploymentError after ``timeout`` seconds). ``flwr run``
        exits 0 even when the ServerApp fails: :attr:`RunOutcome.status` is the SuperLink's word on it."""
        process = self.processes[name]
        try:
            returncode = process.wait(timeout=max(0.0, timeout - (time.monotonic() - self._started[name])))
        except subprocess.TimeoutExpired:
            self._kill([process], signal.SIGKILL, grace=5.0)
            raise DeploymentError(f"`flwr run` did not finish within {timeout:g} s; see {self.logs}") from None
        log = self.logs / f"{name}.log"
        found = re.search(r"Successfully started run (\d+)", log.read_text(errors="replace"))
        run_id = found.group(1) if found else None
        return RunOutcome(returncode, time.monotonic() - self._started[name], run_id, log,
                          self._status(run_id) if run_id else "not started")

    def run(self, app_folder: Path, timeout: float, run_config: str = "") -> RunOutcome:
        """``flwr run APP_FOLDER --stream`` until the run ends."""
        return self.wait_run(self.start_run(app_folder, run_config), timeout)

    def _status(self, run_id: str) -> str:
        """``flwr ls``'s status of a run (e.g. finished:completed, finished:failed)."""
        try:
            listed = subprocess.run(["flwr", "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
                                    env=self._env(self.flwr_home), capture_output=True, text=True, timeout=60, check=False,
                                    start_new_session=True)
            return str(json.loads(listed.stdout)["runs"][0]["status"])
        except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, IndexError) as err:
            return f"unknown ({err})"

    def node_log(self, i: int) -> str:
        path = self.logs / f"supernode-{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_log(self, i: int) -> str:
        path = self.logs / f"worker-{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------ cleanup

    @staticmethod
    def _kill(processes: list[subprocess.Popen], sig: signal.Signals, grace: float) -> None:
        """Kill each process's session (its own: started with start_new_session, so its group id is its pid, even
        after it exited) and every live descendant with theirs (some start sessions of their own); bounded."""
        tree: list[psutil.Process] = []
        for process in processes:
            if process.poll() is None:
                try:
                    root = psutil.Process(process.pid)
                    tree += [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
        groups = {p.pid for p in processes}
        for p in tree:
            try:
                groups.add(os.getpgid(p.pid))
            except ProcessLookupError:
                pass
        groups.discard(os.getpgrp())  # never the caller's own group
        for group in groups:
            try:
                os.killpg(group, sig)
                if sig != signal.SIGKILL:  # a stopped process acts on the signal only once continued (as shells do)
                    os.killpg(group, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass
        psutil.wait_procs(tree, timeout=grace)
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for process in processes:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """Kill everything this deployment started (idempotent)."""
        if self.processes:
            self._kill(list(self.processes.values()), signal.SIGTERM, grace=10.0)
        atexit.unregister(self.close)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info) -> None:
        self.close()
