"""A site's warm worker (``client.worker``): a federation through it equals one in process, every
message runs in a fresh forked child (nothing carried over from earlier messages), the context's
state travels back, and a failing, dying, abandoned or unreachable handler ends in a clear error."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import context_to_proto, message_to_proto

from fedlego.client.worker import (
    SOCKET_NAME,
    WORKER_ENV,
    SiteWorkerError,
    WorkerUnavailable,
    forward,
    send_frame,
    site_worker,
)
from fedlego.common.protocol import DescribeRequest, MessageType
from fedlego.inprocess import InProcessTransport
from fedlego.launcher import quiet_environment
from tests.test_federation import SMALL, run

PROBE_APP = """
import os
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
CALLS = []


@app.query("probe")
def probe(message, context):
    CALLS.append(1)
    action = message.content["do"]["what"]
    if action == "raise":
        raise ValueError("bad value in column age")
    if action == "die":
        os._exit(3)
    if action == "sleep":
        open(os.environ["PROBE_MARK"], "w").write(str(os.getpid()))
        time.sleep(60)
    seen = int(context.state["seen"]["count"]) + 1 if "seen" in context.state else 1
    context.state["seen"] = ConfigRecord({"count": seen})
    return Message(RecordDict({"probe": ConfigRecord({"pid": os.getpid(), "calls": len(CALLS)})}), reply_to=message)
"""


def _wait_for_socket(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no worker socket at {path} after {timeout:.0f} s"
        time.sleep(0.1)


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def probe_worker(tmp_path_factory):
    """A worker running the probe app; yields its socket path."""
    folder = tmp_path_factory.mktemp("probe-app")
    (folder / "probe_app.py").write_text(textwrap.dedent(PROBE_APP))
    environment = {**quiet_environment(folder / "home"), "PYTHONPATH": str(folder), "PROBE_MARK": str(folder / "pid")}
    with site_worker(environment, app_reference="probe_app:app") as reach:
        path = Path(reach[WORKER_ENV])
        _wait_for_socket(path)
        yield path, folder / "pid"


def _probe(what: str) -> tuple[Message, Context]:
    message = Message(RecordDict({"do": ConfigRecord({"what": what})}), dst_node_id=7, message_type="query.probe")
    return message, Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's runtime names the running task; these tests play the runtime."""
    InProcessTransport({}, 0)


def test_each_message_runs_in_a_fresh_child_and_the_state_comes_back(probe_worker):
    path, _ = probe_worker
    message, context = _probe("ok")
    first = forward(str(path), message, context)
    second = forward(str(path), message, context)
    pids = {int(first.content["probe"]["pid"]), int(second.content["probe"]["pid"])}
    assert len(pids) == 2 and os.getpid() not in pids
    assert first.content["probe"]["calls"] == second.content["probe"]["calls"] == 1  # no module state carried over
    assert context.state["seen"]["count"] == 2  # the node's state does travel, as Flower keeps it
    assert first.metadata.reply_to_message_id == message.metadata.message_id


def test_a_failing_or_dying_handler_is_a_clear_error(probe_worker):
    path, _ = probe_worker
    with pytest.raises(SiteWorkerError, match="ValueError: bad value in column age"):
        forward(str(path), *_probe("raise"))
    with pytest.raises(SiteWorkerError, match="ended without a reply"):
        forward(str(path), *_probe("die"))
    assert forward(str(path), *_probe("ok")).content["probe"]["calls"] == 1  # the worker goes on


def test_a_child_whose_clientapp_went_away_ends(probe_worker):
    path, mark = probe_worker
    mark.unlink(missing_ok=True)
    message, context = _probe("sleep")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(str(path))
        send_frame(connection, message_to_proto(message).SerializeToString())
        send_frame(connection, context_to_proto(context).SerializeToString())
        _wait_for_socket(mark, 30)
        time.sleep(0.2)
        child = int(mark.read_text())
        assert _alive(child)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the abandoned child still runs"
        time.sleep(0.1)


def test_an_unreachable_worker_is_named_and_the_clientapp_runs_the_message_itself(tmp_path, monkeypatch):
    missing = tmp_path / SOCKET_NAME
    with pytest.raises(WorkerUnavailable, match=str(missing)):
        forward(str(missing), *_probe("ok"))
    monkeypatch.setenv(WORKER_ENV, str(missing))
    transport = InProcessTransport({**SMALL}, 2)
    replies = transport.exchange(MessageType.DESCRIBE.value, {1000: DescribeRequest().to_payload()}, timeout=30)
    assert replies[1000].error is None and replies[1000].payload is not None


def test_a_federation_through_the_worker_equals_one_in_process(tmp_path, monkeypatch):
    in_process, _ = run(SMALL)
    with site_worker(quiet_environment(tmp_path / "home")) as reach:
        _wait_for_socket(Path(reach[WORKER_ENV]))
        monkeypatch.setenv(WORKER_ENV, reach[WORKER_ENV])
        through_worker, _ = run(SMALL)
    assert through_worker["status"] == in_process["status"] == "completed"
    assert through_worker["metrics"] == in_process["metrics"]
    assert through_worker["failures"] == in_process["failures"] == []


def test_the_worker_leaves_with_the_process_that_started_it(tmp_path):
    script = tmp_path / "starter.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            from fedlego.client.worker import site_worker
            from fedlego.launcher import quiet_environment
            with site_worker(quiet_environment({str(tmp_path / "home")!r})) as reach:
                print(reach["{WORKER_ENV}"], flush=True)
                time.sleep(30)
            """
        )
    )
    starter = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    path = Path(starter.stdout.readline().strip())
    _wait_for_socket(path)
    worker_pids = [pid for pid in _pids_mentioning(str(path.parent)) if pid != starter.pid]
    assert worker_pids
    starter.kill()  # no clean-up: the worker must notice by itself
    starter.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in worker_pids):
        assert time.monotonic() < deadline, "the worker outlived the process that started it"
        time.sleep(0.1)


def test_after_the_warm_up_a_federation_imports_next_to_nothing():
    """Every module a message needs is imported by the worker once; one a handler imports on use
    (and LAZY_IMPORTS misses) would be imported again by every message's child."""
    script = textwrap.dedent(
        """
        import sys
        from fedlego.client.worker import warm_up
        warm_up()
        from tests.test_federation import SMALL, run
        before = set(sys.modules)
        results, _ = run(SMALL)
        assert results["status"] == "completed", results["status"]
        print(sorted(set(sys.modules) - before))
        """
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert len(imported) <= 5, f"modules imported per message despite the warm-up: {imported}"
