"""A warm node worker: one long-lived process per SuperNode that runs privfed's ClientApp for every message.

By default Flower 1.42's SuperNode starts a new ClientApp process for each message, which imports torch,
transformers and Opacus and rebuilds the model and its data every time (~35 s here, minutes for a model of a few
GB). Started with ``flower-supernode --isolation process --superexec-auth-secret-file F``, the SuperNode starts
none: this worker claims each task through the SuperNode's Runtime API (``AcquireTask``, signed with the shared
secret; an unsigned claim gets HTTP 401), pulls its message and context, runs privfed's ClientApp here and pushes
the reply and the context back. torch, the model and the data stay loaded between messages and runs
(:func:`privfed.engines.flower.node.node_federation` caches them by config fingerprint); what must not outlive a
message is still restored from outside the process for each one: the protocol half's state from Flower's node
state, the ledger from its file under its lock.

The worker runs the ClientApp of the privfed installed on the node, never code shipped in the run's FAB: a data
holder's machine executes only what its operator installed (a run of any other app is answered with a refusal).

It uses Flower's task-level helpers (``flwr.supernode.runtime.run_clientapp``), which are not a public API: flwr is
pinned, and ``tests/test_flower_worker.py`` fails loudly if an upgrade moves them. :func:`supervise` restarts a
worker that crashed; the message it held is never answered, so its token expires (no heartbeats) and the server
counts that node as a dropout of the round, which secure aggregation recovers from.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from privfed.errors import ConfigError

log = logging.getLogger(__name__)

ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"  # the one Runtime API call the shared secret signs
SECRET_REFUSED = 3  # the worker's exit status when the SuperNode refuses its secret: restarting cannot help
PERMANENT = frozenset({2, SECRET_REFUSED})  # bad settings (2) or a refused secret: the supervisor stops too
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
PULL_BACKOFF, PULL_BACKOFF_CAP = 0.02, 0.5  # seconds: a message's content is usually there within milliseconds
READY = "privfed worker ready"  # logged once the imports are done and tasks are claimed


@dataclass(frozen=True)
class WorkerSettings:
    """Where the SuperNode's Runtime API listens (``--host``/``--port`` of flower-supernode; loopback only: the
    API is plain HTTP and carries the messages) and the file holding the SuperExec secret both were given."""

    runtime_api: str
    secret_file: Path
    poll_seconds: float = 0.05

    def __post_init__(self) -> None:
        host, _, port = self.runtime_api.rpartition(":")
        if host not in LOOPBACK_HOSTS or not port.isdigit():
            raise ConfigError("--runtime-api", f"{self.runtime_api!r}: give the SuperNode's Runtime API as "
                                               "127.0.0.1:PORT (it speaks plain HTTP: run the worker on the node's "
                                               "machine)")
        if not self.secret_file.is_file():
            raise ConfigError("--secret-file", f"{self.secret_file} does not exist: give the file passed to "
                                               "flower-supernode --superexec-auth-secret-file")
        if not 0 < self.poll_seconds <= 10:
            raise ConfigError("--poll", f"must be in (0, 10] seconds, got {self.poll_seconds}")

    def secret(self) -> bytes:
        secret = self.secret_file.read_bytes()
        if not secret:
            raise ConfigError("--secret-file", f"{self.secret_file} is empty")
        return secret


def write_secret(path: Path) -> Path:
    """A fresh 32-byte SuperExec secret, readable by its owner only (the SuperNode and its worker read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return path


RETRYABLE_STATUS = frozenset({httpx.codes.BAD_GATEWAY, httpx.codes.SERVICE_UNAVAILABLE, httpx.codes.GATEWAY_TIMEOUT})
RETRYABLE_TRANSPORT = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
                       httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)
TASK_RETRY_SECONDS = 60.0  # a task's calls give up after this long (its token expires without heartbeats anyway)


def retry_invoker(max_time: float | None, stop: threading.Event | None = None) -> RetryInvoker:
    """Flower's HTTP retries (transport errors and 502/503/504, exponential backoff up to 20 s) without its
    process-wide reactions: Flower's own invoker answers a 401 by interrupting the whole process and a 403 by
    raising RunNotRunningException — right for a process that serves one task, fatal for one that serves many.
    Here every other HTTP status is raised to the caller, which ends the task (or, for a refused claim, the
    worker) with the reason. Once ``stop`` is set, waits end at once and nothing more is retried."""

    def give_up(exc: Exception) -> bool:
        if stop is not None and stop.is_set():
            return True
        return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in RETRYABLE_STATUS

    return RetryInvoker(lambda: exponential(max_delay=20), (*RETRYABLE_TRANSPORT, httpx.HTTPStatusError),
                        max_tries=None, max_time=max_time, should_giveup=give_up,
                        wait_function=None if stop is None else stop.wait)


class SecretRefused(Exception):
    """The SuperNode answered the claim with HTTP 401: this worker's secret is not the SuperNode's."""


def _runtime_client(runtime_api: str, component: str, credentials, invoker: RetryInvoker) -> RuntimeHttpClient:
    """A client of the SuperNode's Runtime API (plain HTTP on 127.0.0.1) speaking as ``component``."""
    return RuntimeHttpClient.from_server_address(
        server_address=runtime_api, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name=component), credentials], retry_invoker=invoker)


def _acquire_client(settings: WorkerSettings, stop: threading.Event) -> RuntimeHttpClient:
    signer = SuperExecAuthHttpInterceptor(master_secret=settings.secret(), protected_methods=frozenset({ACQUIRE_TASK}))
    return _runtime_client(settings.runtime_api, "SuperExec", signer,
                           retry_invoker(None, stop))  # a SuperNode that restarts is waited for, until told to stop


def claim(client: RuntimeHttpClient) -> str | None:
    """The token of one pending ClientApp task of the SuperNode, or None when it has none."""
    try:
        response = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP],
                                                         agentapp_fab_hashes=[]))
    except httpx.HTTPStatusError as err:
        if err.response.status_code == httpx.codes.UNAUTHORIZED:
            raise SecretRefused from None
        raise
    return response.token if response.HasField("task") and response.token else None


def _heartbeat(client: RuntimeHttpClient, expired: threading.Event) -> Callable[[], bool]:
    """Flower's task heartbeat, except that a refused one marks the task expired instead of interrupting the
    process (Flower's own raises SIGINT, which would end a worker that serves many tasks)."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            response = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False
        except Exception:  # the token or the run is gone (or the answer is unreadable): the reply would be refused
            expired.set()
            return False
        if not response.success:
            expired.set()
        return True

    return beat


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context]:
    """The claimed task's message and context: Flower's ``pull_task_input`` with a short backoff. A warm worker
    claims a task the moment it appears, often before the SuperNode holds the message's content; Flower's 1 s
    first backoff (fine for a process that took seconds to start) would then cost about a second a message."""
    response = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = response.task_id
    TaskIdentity.run_id = response.run.run_id
    TaskIdentity.node_id = response.context.node_id
    context = context_from_proto(response.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode's Runtime API gave the task no message")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's: the deflated message lacks its id
    return message, context


def run_task(runtime_api: str, token: str) -> None:
    """Serve one claimed task with privfed's ClientApp, as Flower's ``flwr-clientapp`` process does (pull the
    message and context, call the app, push the reply and the updated context), in this process."""
    from privfed.engines.flower.apps import client_app

    client = _runtime_client(runtime_api, "flwr-clientapp", RuntimeTokenHttpInterceptor(token),
                             retry_invoker(TASK_RETRY_SECONDS))
    expired = threading.Event()
    heartbeat = HeartbeatSender(_heartbeat(client, expired))
    heartbeat.start()
    message = reply = context = None
    status, details = SubStatus.FAILED, "the privfed worker failed before running the ClientApp"
    try:
        message, context = pull_task_input(client)
        reply = client_app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as err:  # the node answers with Flower's error message, as a ClientApp process would
        log.exception("the ClientApp raised")
        details = f"{type(err).__name__}: {err}"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None and not expired.is_set():
                try:
                    push_message(client, reply, context)
                except Exception as err:  # the node's reply is lost (a dropout): the task output still goes
                    log.exception("pushing the reply failed")
                    status, details = SubStatus.FAILED, f"pushing the reply failed: {type(err).__name__}: {err}"
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()


def serve(settings: WorkerSettings, *, stop: threading.Event | None = None, max_tasks: int | None = None) -> int:
    """Claim and serve the SuperNode's ClientApp tasks until ``stop`` is set (or ``max_tasks`` were served);
    returns the number served. Raises SecretRefused when the SuperNode does not accept the secret."""
    from privfed.engines.flower import node

    for module in ("privfed.engines.flower.apps", "privfed.federation.setup"):  # torch, transformers, Opacus: once,
        importlib.import_module(module)                                         # before the first message

    node.mark_warm()  # this process's start-up is not any message's
    stop = stop or threading.Event()
    client = _acquire_client(settings, stop)
    served = 0
    log.info("%s: claiming the ClientApp tasks of the SuperNode at %s", READY, settings.runtime_api)
    try:
        while not stop.is_set() and (max_tasks is None or served < max_tasks):
            try:
                token = claim(client)
            except (httpx.TransportError, httpx.HTTPStatusError):
                if stop.is_set():  # the SuperNode was unreachable when the worker was told to stop
                    break
                raise
            if token is None:
                stop.wait(settings.poll_seconds)
                continue
            started = time.perf_counter()
            try:
                run_task(settings.runtime_api, token)
            except Exception as err:  # this task is lost (a dropout), not the worker
                log.warning("a task failed outside the ClientApp (%s: %s); its node is a dropout of that message",
                            type(err).__name__, err)
            served += 1
            log.info("served message %d in %.2f s", served, time.perf_counter() - started)
    finally:
        client.close()
    return served


def supervise(settings: WorkerSettings, *, max_backoff: float = 30.0) -> int:
    """Run :func:`serve` in a child process and start a new one whenever it dies (doubling the pause after
    quick crashes, up to ``max_backoff`` s); returns when told to stop (SIGTERM/SIGINT: the child is stopped too)
    or when the SuperNode refuses the secret (exit status 3: restarting cannot help)."""
    command = [sys.executable, "-m", "privfed.engines.flower.worker", "--runtime-api", settings.runtime_api,
               "--secret-file", str(settings.secret_file), "--poll", str(settings.poll_seconds),
               "--parent-pid", str(os.getpid())]  # a worker whose supervisor died stops: never two per node
    stopping = threading.Event()
    child: list[subprocess.Popen] = []

    def stop_child() -> None:
        stopping.set()
        if child and child[0].poll() is None:
            child[0].terminate()
        try:
            child[0].wait(timeout=30)  # the message in hand may finish; a hung one is killed
        except (subprocess.TimeoutExpired, IndexError):
            if child:
                child[0].kill()

    def on_signal(signum, frame) -> None:  # from a thread: an Event's lock may be held where the signal lands
        threading.Thread(target=stop_child, daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    backoff = 1.0
    try:
        while not stopping.is_set():
            started = time.monotonic()
            child[:] = [subprocess.Popen(command)]
            if stopping.is_set():  # told to stop while it started
                child[0].terminate()
            returncode = child[0].wait()
            if stopping.is_set():
                return 0
            if returncode in PERMANENT:  # restarting cannot help: a refused secret, bad settings
                return returncode
            lived = time.monotonic() - started
            backoff = 1.0 if lived > 60 else min(max_backoff, backoff * 2)
            log.warning("the privfed worker for %s exited with %d after %.0f s; restarting in %.0f s (the message it "
                        "held, if any, is a dropout)", settings.runtime_api, returncode, lived, backoff)
            stopping.wait(backoff)
        return 0
    finally:
        if child and child[0].poll() is None:
            child[0].kill()
            child[0].wait(timeout=10)
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m privfed.engines.flower.worker``: the worker (what :func:`supervise` starts), or with
    ``--supervise`` its supervisor (what ``privfed flower worker`` and the loopback deployment run)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m privfed.engines.flower.worker")
    parser.add_argument("--runtime-api", required=True)
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--supervise", action="store_true", help="run the worker in a child process, restarted "
                                                                 "whenever it dies")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # the supervisor: stop when it is gone
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s privfed-worker %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    try:
        settings = WorkerSettings(args.runtime_api, args.secret_file, args.poll)
    except ConfigError as err:
        print(f"privfed worker: {err}", file=sys.stderr)
        return 2
    if args.supervise:
        return supervise(settings)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    stop = threading.Event()  # set from a thread: an Event's lock may be held where a signal lands
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=stop.set, daemon=True).start())
    try:
        served = serve(settings, stop=stop)
    except KeyboardInterrupt:  # Ctrl-C, or the supervisor is gone (its monitor interrupts this process)
        return 130
    except SecretRefused:
        print(f"privfed worker: the SuperNode at {settings.runtime_api} refused the secret in {settings.secret_file} "
              "(HTTP 401): give the worker the file passed to flower-supernode --superexec-auth-secret-file",
              file=sys.stderr)
        return SECRET_REFUSED
    log.info("stopped after %d messages", served)
    return 0


if __name__ == "__main__":
    sys.exit(main())
