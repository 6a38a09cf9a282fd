"""Run a command and measure it: wall time and the peak memory (RSS) of its whole process tree,
including processes it detaches (found by a marker in their environment), polled every 0.25 s."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from fedlego.launcher import default_interrupt

PAGE = os.sysconf("SC_PAGE_SIZE")
POLL_SECONDS = 0.25


# -- process-tree memory ---------------------------------------------------------------------
def _processes() -> dict[int, int]:
    """pid -> ppid of every process (Linux /proc)."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        parents[int(entry.name)] = int(fields[1])
    return parents


def _has_environment(pid: int, needle: bytes) -> bool:
    try:
        return needle in (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return False


def _rss(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(roots: set[int], children: dict[int, list[int]]) -> set[int]:
    tree, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in tree:
            tree.add(pid)
            stack += children.get(pid, [])
    return tree


def process_tree(root: int, needle: bytes | None) -> set[int]:
    """``root``, its descendants (ppid chains) and, when ``needle`` is given, every process whose
    environment contains it, with their descendants (Flower and Ray re-parent or detach helpers)."""
    parents = _processes()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    roots = {root} if root in parents else set()
    if needle is not None:
        mine = os.getpid()
        roots |= {pid for pid in parents if pid != mine and _has_environment(pid, needle)}
    return _descendants(roots, children)


def run_measured(
    command: list[str], flwr_home: Path | None, timeout: float, trace: list[tuple[float, int]] | None = None
) -> dict[str, Any]:
    """Run ``command`` in its own session and poll the RSS of its process tree every 0.25 s; on
    timeout interrupt it (SIGINT, so the CLI stops its Flower processes), then kill what is left of
    the tree by pid. Returns exit code, wall time, peak tree RSS and the output lines; ``trace``
    receives every poll as (Unix time, tree RSS bytes)."""
    needle = None if flwr_home is None else f"FLWR_HOME={flwr_home}".encode() + b"\0"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=default_interrupt,  # the timeout's SIGINT works in a background benchmark too
    )
    state = {"peak_bytes": 0, "peak_processes": 0, "timed_out": False}
    done = threading.Event()

    def monitor() -> None:
        while not done.is_set():
            tree = process_tree(process.pid, needle)
            total = sum(_rss(pid) for pid in tree)
            if trace is not None:
                trace.append((time.time(), total))
            if total > state["peak_bytes"]:
                state["peak_bytes"], state["peak_processes"] = total, len(tree)
            if not state["timed_out"] and time.perf_counter() - start > timeout:
                state["timed_out"] = True
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
            done.wait(POLL_SECONDS)

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    assert process.stdout is not None
    lines = [line.rstrip("\n") for line in process.stdout]
    try:
        process.wait(timeout=90 if state["timed_out"] else None)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    for pid in process_tree(process.pid, needle) - {process.pid}:  # whatever of this run is still alive
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {
        "returncode": process.returncode,
        "wall_seconds": wall,
        "timed_out": state["timed_out"],
        "peak_rss_bytes": state["peak_bytes"],
        "peak_processes": state["peak_processes"],
        "output": lines,
    }
