"""A site's warm worker (``client.worker``): every launch runs in a fresh forked child (nothing
carried over from earlier messages), the launcher exits with its exit code, an abandoned child
ends, an unreachable worker falls back to Flower's own flwr-clientapp, so does a worker whose code
changed on disk, the worker leaves with the process that started it, and after its warm-up a
federation imports next to nothing.
(``tests/test_deployment.py`` runs real sites through it.)"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedlego.client.worker import LAUNCHER_NAME, SOCKET_NAME, site_worker, write_launcher
from fedlego.launcher import quiet_environment

PROBE = '''
import json
import os
import time

CALLS = []


def run(arguments):
    """Write what this child saw to arguments[0], then act on arguments[1]."""
    CALLS.append(1)
    out, action = arguments
    with open(out, "w") as handle:
        json.dump({"pid": os.getpid(), "calls": len(CALLS)}, handle)
    if action == "raise":
        raise ValueError("bad value in column age")
    if action == "die":
        os._exit(9)
    if action == "sleep":
        time.sleep(60)
    return int(action)
'''


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A warm worker running the probe per launch; yields the SuperNode's environment for it."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe.py").write_text(textwrap.dedent(PROBE))
    environment = {**quiet_environment(folder / "home"), "PYTHONPATH": str(folder)}
    with site_worker(environment, run="probe:run") as additions:
        yield {**environment, **additions}


def _launch(environment: dict, *arguments: str, **options) -> subprocess.CompletedProcess:
    """``flwr-clientapp ARGS`` as Flower's SuperExec starts it: found on the SuperNode's PATH."""
    return subprocess.run(
        [LAUNCHER_NAME, *arguments], env=environment, capture_output=True, text=True, timeout=60, **options
    )


def test_the_launcher_is_found_first_and_the_superexec_polls_quickly(worker):
    launcher = Path(worker["PATH"].split(os.pathsep)[0]) / LAUNCHER_NAME
    assert launcher.is_file() and launcher.stat().st_mode & 0o077 == 0
    assert launcher.parent.parent.stat().st_mode & 0o077 == 0  # the socket's folder is the user's only
    assert float(worker["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]) < 1.0


def test_each_launch_runs_in_a_fresh_child_with_its_exit_code(worker, tmp_path):
    seen = []
    for index, code in enumerate(("0", "3")):
        out = tmp_path / f"{index}.json"
        assert _launch(worker, str(out), code).returncode == int(code)
        seen.append(json.loads(out.read_text()))
    assert seen[0]["pid"] != seen[1]["pid"] and os.getpid() not in {s["pid"] for s in seen}
    assert [s["calls"] for s in seen] == [1, 1]  # no module state carried over from the last message


def test_a_failing_or_dying_child_fails_its_launcher_only(worker, tmp_path):
    raised = _launch(worker, str(tmp_path / "a.json"), "raise")
    assert raised.returncode == 1
    died = _launch(worker, str(tmp_path / "b.json"), "die")
    assert died.returncode == 1 and "ended without an exit code" in died.stderr
    assert _launch(worker, str(tmp_path / "c.json"), "0").returncode == 0  # the worker goes on


def test_a_child_whose_launcher_went_away_ends(worker, tmp_path):
    out = tmp_path / "sleep.json"
    launcher = subprocess.Popen([LAUNCHER_NAME, str(out), "sleep"], env=worker)
    _wait_for(out.exists, 30, "the child to start")
    time.sleep(0.2)
    child = json.loads(out.read_text())["pid"]
    assert _alive(child)
    launcher.kill()
    launcher.wait()
    _wait_for(lambda: not _alive(child), 10, "the abandoned child to end")


def test_without_the_worker_the_launcher_runs_flowers_own(tmp_path):
    flower = tmp_path / "flower-clientapp"
    flower.write_text(f'#!/bin/sh\necho flower got "$@" > {tmp_path / "ran"}\n')
    flower.chmod(0o700)
    folder = tmp_path / "a worker's folder"  # spaces and quotes in the path are fine
    folder.mkdir(mode=0o700)
    launcher = write_launcher(folder, str(flower))  # no worker listens on folder/worker.sock
    assert not (folder / SOCKET_NAME).exists()
    result = subprocess.run([str(launcher), "--token", "abc"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "site worker cannot be reached" in result.stderr
    assert (tmp_path / "ran").read_text().strip() == "flower got --token abc"
    missing = write_launcher(tmp_path, str(tmp_path / "no-such-flwr-clientapp"))
    result = subprocess.run([str(missing), "--token", "abc"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "flwr-clientapp" in result.stderr and "cannot be run" in result.stderr
    assert "Traceback" not in result.stderr  # a clear line, not a crash


def test_after_its_code_changed_on_disk_the_worker_hands_messages_to_fresh_processes(tmp_path):
    """An upgrade under a running site: the next message runs as Flower's flwr-clientapp, a fresh
    process with the new code, instead of in a child of the stale worker."""
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / LAUNCHER_NAME).write_text(f'#!/bin/sh\necho fresh "$@" > {tmp_path / "fresh"}\n')
    (fake / LAUNCHER_NAME).chmod(0o700)
    environment = {**quiet_environment(tmp_path / "home"), "PYTHONPATH": str(tmp_path)}
    environment["PATH"] = f"{fake}{os.pathsep}{environment['PATH']}"  # the "real" flwr-clientapp
    with site_worker(environment, run="probe:run") as additions:
        site = {**environment, **additions}
        assert _launch(site, str(tmp_path / "warm.json"), "0").returncode == 0
        assert (tmp_path / "warm.json").exists() and not (tmp_path / "fresh").exists()
        stamp = (tmp_path / "probe.py").stat()
        os.utime(tmp_path / "probe.py", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # "upgraded"
        for _ in range(2):
            assert _launch(site, str(tmp_path / "after.json"), "0").returncode == 0
            assert not (tmp_path / "after.json").exists()
            assert (tmp_path / "fresh").read_text().split() == ["fresh", str(tmp_path / "after.json"), "0"]


def test_the_worker_leaves_with_the_process_that_started_it(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from fedlego.client.worker import site_worker
        from fedlego.launcher import quiet_environment
        with site_worker(quiet_environment({str(tmp_path / "home")!r}), run="builtins:len") as additions:
            print(additions["PATH"].split(":")[0], flush=True)
            time.sleep(60)
        """
    )
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    socket_path = Path(starter.stdout.readline().strip()).parent / SOCKET_NAME
    assert socket_path.exists()
    workers = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if str(socket_path.parent).encode() in (entry / "cmdline").read_bytes():
                workers.append(int(entry.name))
        except OSError:
            continue
    assert workers
    starter.kill()  # no clean-up: the worker must notice by itself
    starter.wait()
    _wait_for(lambda: not any(_alive(pid) for pid in workers), 10, "the worker to leave")


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
