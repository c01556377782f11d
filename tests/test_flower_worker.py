"""The warm node worker's contract with Flower, and its settings.

The worker leans on Flower's task-level helpers and Runtime API messages, which are not a public API: these tests
fail loudly when a Flower upgrade moves or reshapes what the worker calls. Its behaviour on a real SuperNode (many
messages in one process, a worker killed as its masked-input request arrives, a stale secret) is in the slow
``test_flower_deployment``.
"""
from __future__ import annotations

import inspect
import subprocess
import sysconfig
from pathlib import Path

import flwr
import pytest

from privfed.engines.flower import worker
from privfed.errors import ConfigError

SCRIPTS = Path(sysconfig.get_path("scripts"))  # this Python's console scripts: a venv need not be on PATH


def test_flower_is_the_version_the_worker_was_written_against():
    assert flwr.__version__ == "1.42.0", "the warm worker uses Flower's task-level helpers: re-check them, then " \
                                         "update the pin in setup.cfg and this test"


def test_flower_helpers_the_worker_calls_keep_their_signatures():
    params = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert params(worker.push_message)[:3] == ["client", "message", "context"]
    assert params(worker.push_task_output)[:4] == ["client", "context", "sub_status", "details"]
    tree = inspect.signature(worker.pull_and_inflate_object_from_tree).parameters
    assert {"object_tree", "pull_object_fn", "confirm_object_received_fn", "return_type", "initial_backoff",
            "backoff_cap"} <= set(tree)
    assert params(worker.make_pull_object_fn_protobuf) == ["pull_object_protobuf", "node", "run_id"]
    for method in ("AcquireTask", "PullTaskInput", "PullMessages", "PullObject", "ConfirmMessageReceived",
                   "PushMessages", "PushObject", "PushTaskOutput", "SendTaskHeartbeat"):
        assert callable(getattr(worker.RuntimeHttpClient, method)), method
    request = worker.AcquireTaskRequest(supported_task_types=[worker.TaskType.CLIENT_APP], agentapp_fab_hashes=[])
    assert list(request.supported_task_types) == ["flwr-clientapp"]
    from flwr.proto.runtime_pb2 import AcquireTaskResponse, PullTaskInputResponse

    assert {"task", "token"} <= {f.name for f in AcquireTaskResponse.DESCRIPTOR.fields}
    assert {"task_id", "run", "context"} <= {f.name for f in PullTaskInputResponse.DESCRIPTOR.fields}
    assert {"master_secret", "protected_methods"} <= set(
        inspect.signature(worker.SuperExecAuthHttpInterceptor).parameters)
    assert {"_task_id", "_run_id", "_node_id"} <= set(vars(worker.TaskIdentity))  # set as Flower's pull sets them


def test_supernode_offers_the_process_isolation_and_secret_the_worker_needs():
    shown = subprocess.run([SCRIPTS / "flower-supernode", "--help"], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    assert "--isolation {subprocess,process}" in shown and "--superexec-auth-secret-file" in shown


def test_worker_settings_refuse_what_cannot_work(tmp_path):
    secret = worker.write_secret(tmp_path / "secret")
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes()) == 32
    assert worker.WorkerSettings("127.0.0.1:9094", secret).secret() == secret.read_bytes()
    with pytest.raises(ConfigError, match="127.0.0.1:PORT"):
        worker.WorkerSettings("10.0.0.5:9094", secret)  # the Runtime API is plain HTTP: never across machines
    with pytest.raises(ConfigError, match="127.0.0.1:PORT"):
        worker.WorkerSettings("127.0.0.1", secret)
    with pytest.raises(ConfigError, match="does not exist"):
        worker.WorkerSettings("127.0.0.1:9094", tmp_path / "missing")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty"):
        worker.WorkerSettings("127.0.0.1:9094", tmp_path / "empty").secret()


def test_worker_cli_exits_2_with_the_reason_on_bad_settings(tmp_path):
    done = subprocess.run([SCRIPTS / "privfed", "flower", "worker", "--runtime-api", "192.168.1.4:9094", "--secret-file",
                           str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--runtime-api" in done.stderr and "127.0.0.1:PORT" in done.stderr
