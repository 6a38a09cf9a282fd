"""A site's warm worker: Flower's ``flwr-clientapp`` run in a child forked from a process that has
imported Flower, PyTorch and fedlego once, instead of a new process importing them per message.

Flower's SuperExec (started by the SuperNode) launches ``flwr-clientapp --token ...`` for every
message to a site; the process imports Flower, PyTorch, pandas and fedlego before it can start:
2-4 s of CPU per message on a small machine, more when a machine's sites start theirs at once.
``fedlego site`` starts this worker next to its SuperNode and puts a launcher named
``flwr-clientapp`` first on the SuperNode's PATH, in the worker's private folder. The launcher
(plain Python, no imports beyond the standard library) hands its arguments to the worker over a
Unix socket; the worker forks a child that runs Flower's own ``flwr-clientapp`` entry point with
them (it pulls the message with the token, runs the fedlego ClientApp, pushes the reply), and the
launcher exits with the child's exit code. When the worker cannot be reached the launcher runs
Flower's ``flwr-clientapp`` itself.

Isolation stays that of a fresh process: the worker holds imports and nothing else (it never
reads data or handles a message itself); each message runs in its own child, which exits when
done, or as soon as its launcher goes away (a task stopped by Flower). The folder holding the
socket and the launcher is only the site's user's (0700).

Code upgraded under a running site is not run stale: before each message the worker compares the
installed versions of fedlego, Flower, PyTorch and the plugins, and the files of the fedlego and
plugin modules it imported, with those of its warm-up; after a change it hands every message back
to its launcher, which runs Flower's ``flwr-clientapp`` as a fresh process (the new code), and says
once that ``fedlego site`` should be restarted to warm up again.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

from fedlego.common.versions import PLUGIN_GROUPS, software_versions
from fedlego.launcher import stop_process, tool

SOCKET_NAME = "worker.sock"
LAUNCHER_NAME = "flwr-clientapp"
POLL_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}
"""Flower's SuperExec asks its SuperNode for a new message every second by default; a warm site
starts a message in a fraction of that, so it asks five times a second (on loopback)."""
READY_SECONDS = 120.0
"""How long ``fedlego site`` waits for its worker's imports before connecting without it."""
_LENGTH = struct.Struct(">Q")
_EXIT = struct.Struct(">q")
_ARGUMENTS_SECONDS = 30.0
_ACCEPT_SECONDS = 1.0
"""How often the worker looks up from waiting to see whether ``fedlego site`` is still there."""
RUN_FRESH = -(2**63)
"""The status the worker sends instead of an exit code when its code changed on disk: the
launcher then runs Flower's ``flwr-clientapp`` itself."""
WATCHED_DISTRIBUTIONS = ("fedlego", "flwr", "torch")

LAZY_IMPORTS = (
    "sklearn.model_selection",
    "sklearn.metrics",
    "sksurv.exceptions",
    "sksurv.metrics",
    "sksurv.nonparametric",
    "opacus",
    "opacus.accountants",
    "opacus.accountants.utils",
    "pyarrow.pandas_compat",
    "torch._dynamo",
)
"""Libraries fedlego imports only where it uses them (the CLI stays quick); the worker imports
them up front, or every message would import them again (``tests/test_worker.py`` checks that a
federation imports next to nothing after ``warm_up``)."""

LAUNCHER = '''"""flwr-clientapp for `fedlego site`: hands its arguments to the site's warm worker
(fedlego.client.worker); Flower's own flwr-clientapp when the worker cannot be reached."""
import json
import os
import socket
import struct
import sys


def run_flower():
    try:
        os.execv({flower!r}, [{flower!r}, *sys.argv[1:]])
    except OSError as error:
        print(f"fedlego: Flower's flwr-clientapp ({flower!r}) cannot be run: {{error}}", file=sys.stderr)
        sys.exit(1)


connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    connection.connect({socket_path!r})
except OSError as error:
    print(f"fedlego: the site worker cannot be reached ({{error}}); running flwr-clientapp", file=sys.stderr)
    run_flower()
request = json.dumps(sys.argv[1:]).encode()
connection.sendall(struct.pack(">Q", len(request)) + request)
status = b""
while len(status) < 8:
    chunk = connection.recv(8 - len(status))
    if not chunk:
        print("fedlego: the site worker's child ended without an exit code", file=sys.stderr)
        sys.exit(1)
    status += chunk
code = struct.unpack(">q", status)[0]
if code == {run_fresh}:  # the worker's code changed on disk since it started: a fresh process
    run_flower()
sys.exit(code)
'''


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError(f"the connection closed with {left} of {size} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive_frame(connection: socket.socket) -> bytes:
    """One length-prefixed frame (as the launcher sends its arguments); EOFError when the other
    side closed before it was whole."""
    (size,) = _LENGTH.unpack(_read_exactly(connection, _LENGTH.size))
    return _read_exactly(connection, size)


def warm_up() -> None:
    """Import what running a message needs, once: Flower's ``flwr-clientapp``, every fedlego
    module, the libraries in ``LAZY_IMPORTS`` and the installed encoder and modality-kind plugins
    (installing or upgrading fedlego or a plugin therefore needs ``fedlego site`` restarted)."""
    import fedlego
    from fedlego.common.data.kinds import kind_names
    from fedlego.common.encoders import load_plugins

    importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    for module in pkgutil.walk_packages(fedlego.__path__, prefix="fedlego."):
        if module.name.startswith(("fedlego.common", "fedlego.client")):
            importlib.import_module(module.name)
    for name in LAZY_IMPORTS:
        with suppress(ImportError):
            importlib.import_module(name)
    load_plugins()
    kind_names()


def code_fingerprint(packages: frozenset[str]) -> dict[str, object]:
    """Where the running code came from, as installed now: the versions of fedlego, Flower, PyTorch
    and each plugin distribution, and the modification time of every loaded module file of
    ``packages`` (top-level names; None for a file gone)."""
    versions: dict[str, str | None] = {}
    for name in WATCHED_DISTRIBUTIONS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    versions |= {f"plugin {name}": v for name, v in software_versions().items() if name != "fedlego"}
    files: dict[str, int | None] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and getattr(module, "__name__", "").split(".")[0] in packages:
            try:
                files[path] = os.stat(path).st_mtime_ns
            except OSError:
                files[path] = None
    return {"versions": versions, "files": files}


def code_changes(before: Mapping[str, Mapping], now: Mapping[str, Mapping]) -> list[str]:
    """What differs between two ``code_fingerprint``s, in words (empty: nothing)."""
    versions = [
        f"{name} {before['versions'].get(name)} -> {now['versions'].get(name)}"
        for name in sorted(set(before["versions"]) | set(now["versions"]))
        if before["versions"].get(name) != now["versions"].get(name)
    ]
    files = [path for path, stamp in before["files"].items() if now["files"].get(path) != stamp]
    return versions + ([f"{len(files)} module file(s) changed, e.g. {files[0]}"] if files else [])


def watched_packages(run: Callable | None) -> frozenset[str]:
    """fedlego, the plugins' top-level packages and the module of ``run`` (tests)."""
    plugins = {
        entry.value.split(":")[0].split(".")[0] for group in PLUGIN_GROUPS for entry in entry_points(group=group)
    }
    own = {run.__module__.split(".")[0]} if run is not None else set()
    return frozenset({"fedlego", *plugins, *own})


def run_clientapp(arguments: list[str]) -> int:
    """Flower's ``flwr-clientapp`` entry point with ``arguments``, in this process; its exit code."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv = [LAUNCHER_NAME, *arguments]
    try:
        flwr_clientapp()
    except SystemExit as end:
        return end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    return 0


def _exit_when_abandoned(connection: socket.socket) -> None:
    """End this child once its launcher has gone (it sends nothing more, so the connection reads
    empty only then)."""

    def watch() -> None:
        with suppress(OSError):
            connection.recv(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _child(connection: socket.socket, listener: socket.socket, run: Callable[[list[str]], int]) -> None:
    """In a forked child: run one launcher's request, send the exit code, exit (never returning
    into the worker's loop or running its clean-up)."""
    code = 1
    try:
        listener.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        connection.settimeout(_ARGUMENTS_SECONDS)  # a launcher sends its arguments at once
        arguments = json.loads(receive_frame(connection))
        connection.settimeout(None)
        if not (isinstance(arguments, list) and all(isinstance(a, str) for a in arguments)):
            raise ValueError("the launcher sent no argument list")
        _exit_when_abandoned(connection)
        started = time.monotonic()
        code = run(arguments)
        print(  # before the exit code: once the launcher has it, it leaves, and so does this child
            f"{time.strftime('%H:%M:%S')} fedlego site worker: a message ran in {time.monotonic() - started:.2f} s "
            f"(exit code {code})",
            file=sys.stderr,
            flush=True,
        )
        connection.sendall(_EXIT.pack(code))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _hand_back(connection: socket.socket) -> None:
    """Tell a launcher to run Flower's ``flwr-clientapp`` itself (after reading its arguments, so
    that nothing it sent is left unread)."""
    with suppress(OSError, ValueError, EOFError):  # a launcher gone before its arguments: nothing to tell
        connection.settimeout(_ARGUMENTS_SECONDS)
        receive_frame(connection)
        connection.sendall(_EXIT.pack(RUN_FRESH))
    connection.close()


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def serve(folder: Path, parent_pid: int, run: Callable[[list[str]], int] | None = None) -> int:
    """Listen on ``folder/worker.sock`` until the process ``parent_pid`` (``fedlego site``) ends or
    this one is terminated; fork a child per launcher that runs Flower's ``flwr-clientapp`` (after
    ``warm_up``) or ``run`` (tests: no warm-up) on its arguments. ``folder`` must exist with mode
    0700."""
    if folder.stat().st_mode & 0o077:
        raise SystemExit(f"fedlego site worker: {folder} must be private to its user (mode 0700)")
    packages = watched_packages(run)
    if run is None:
        warm_up()
        run = run_clientapp
    warmed, announced = code_fingerprint(packages), False

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    path = folder / SOCKET_NAME
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    listener.settimeout(_ACCEPT_SECONDS)
    children: set[int] = set()
    try:
        while os.getppid() == parent_pid:
            _reap(children)
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            changes = code_changes(warmed, code_fingerprint(packages))
            if changes:
                if not announced:
                    print(
                        "fedlego site worker: the code changed on disk since this site started "
                        f"({'; '.join(changes)}): each message now runs in a fresh flwr-clientapp process; "
                        "restart `fedlego site` to run warm again",
                        file=sys.stderr,
                        flush=True,
                    )
                    announced = True
                _hand_back(connection)
                continue
            pid = os.fork()
            if pid == 0:
                _child(connection, listener, run)
            connection.close()
            children.add(pid)
    finally:
        listener.close()
        path.unlink(missing_ok=True)
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return 0


def write_launcher(folder: Path, flower_clientapp: str) -> Path:
    """The ``flwr-clientapp`` launcher in ``folder/bin`` (for the worker's socket in ``folder``): a
    shell script running ``launcher.py`` with this Python (no shebang of a long or spaced path)."""
    bin_folder = folder / "bin"
    bin_folder.mkdir(mode=0o700, exist_ok=True)
    script = folder / "launcher.py"
    script.write_text(
        LAUNCHER.format(socket_path=str(folder / SOCKET_NAME), flower=flower_clientapp, run_fresh=RUN_FRESH)
    )
    launcher = bin_folder / LAUNCHER_NAME
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {shlex.quote(str(script))} "$@"\n')
    launcher.chmod(0o700)
    return launcher


@contextmanager
def site_worker(
    environment: Mapping[str, str], enabled: bool = True, run: str | None = None
) -> Iterator[dict[str, str]]:
    """A warm worker for this process's site (``fedlego site``), stopped after: yields what the
    SuperNode's environment needs to use it (nothing when not ``enabled``), once it is ready or
    ``READY_SECONDS`` have passed. ``run`` (``module:function``) replaces Flower's
    ``flwr-clientapp`` (tests)."""
    if not enabled:
        yield {}
        return
    flower = shutil.which(LAUNCHER_NAME, path=environment.get("PATH")) or tool(LAUNCHER_NAME)
    with tempfile.TemporaryDirectory(prefix="fedlego-worker-") as temporary:  # mode 0700
        folder = Path(temporary)
        launcher = write_launcher(folder, flower)
        command = [sys.executable, "-m", "fedlego.client.worker", "--folder", str(folder)]
        command += ["--run", run] if run else []
        process = subprocess.Popen([*command, "--parent-pid", str(os.getpid())], env=dict(environment))
        deadline = time.monotonic() + READY_SECONDS
        while not (folder / SOCKET_NAME).exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # messages before it is ready would each import everything anew
        try:
            path = f"{launcher.parent}{os.pathsep}{environment.get('PATH', '')}"
            yield {"PATH": path, **POLL_ENV}
        finally:
            stop_process(process)


def main(argv: list[str] | None = None) -> int:
    """``python -m fedlego.client.worker --folder DIR --parent-pid PID`` (started by ``fedlego site``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="private folder (0700) for the socket")
    parser.add_argument("--parent-pid", type=int, required=True, help="exit when this process has ended")
    parser.add_argument(
        "--run", help="module:function run per launcher instead of Flower's flwr-clientapp, without warm-up (tests)"
    )
    args = parser.parse_args(argv)
    run = None
    if args.run is not None:
        module, _, function = args.run.partition(":")
        run = getattr(importlib.import_module(module), function)
    return serve(args.folder, args.parent_pid, run)


if __name__ == "__main__":
    raise SystemExit(main())
