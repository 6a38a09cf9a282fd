"""A site's warm worker: PyTorch and fedlego imported once per ``fedlego site``, one forked child
per message.

Flower runs every message to a deployed site in a fresh ClientApp process, which would import
PyTorch, pandas and fedlego again: 2-3 s of CPU per message on a small machine, more when a
machine's sites start theirs at once. ``fedlego site`` starts this worker next to its SuperNode
and names its socket in ``FEDLEGO_SITE_WORKER``; the ClientApp process (``client.app``) then
only forwards the message here (``forward``) and hands the reply back to Flower.

Isolation stays that of a fresh process: the worker holds imports and nothing else (it never
reads data or handles a message itself), and each message runs in a child forked from it that
exits once its reply is sent, or as soon as the ClientApp process waiting for it goes away (a run
stopped by the coordinator). The socket lies in a folder only the site's user can open.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

WORKER_ENV = "FEDLEGO_SITE_WORKER"
"""The environment variable naming the worker's socket for the site's ClientApp processes."""
SOCKET_NAME = "worker.sock"
HANDLERS = "fedlego.client.handlers:site_app"
"""The ClientApp the worker runs: fedlego's handlers."""
_LENGTH = struct.Struct(">Q")
_REPLY, _ERROR = b"reply", b"error"
_ACCEPT_SECONDS = 1.0
"""How often the worker looks up from waiting to see whether ``fedlego site`` is still there."""


class WorkerUnavailable(RuntimeError):
    """The worker's socket cannot be reached: nothing was sent, the message can run elsewhere."""


class SiteWorkerError(RuntimeError):
    """The message failed in the worker's child (its handler raised, or the child died)."""


def send_frame(connection: socket.socket, data: bytes) -> None:
    """One length-prefixed frame."""
    connection.sendall(_LENGTH.pack(len(data)) + data)


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
    """One frame from ``send_frame``; EOFError when the other side closed before it was whole."""
    (size,) = _LENGTH.unpack(_read_exactly(connection, _LENGTH.size))
    return _read_exactly(connection, size)


# --------------------------------------------------------------------------- the ClientApp's side


def forward(socket_path: str, message: Message, context: Context) -> Message:
    """Run ``message`` in the worker at ``socket_path``; ``context.state`` takes the child's.

    WorkerUnavailable when the worker cannot be reached (nothing was sent); SiteWorkerError when
    the handler failed or the child died after the message was sent."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(socket_path)
    except OSError as error:
        connection.close()
        raise WorkerUnavailable(f"the site worker at {socket_path} cannot be reached ({error})") from None
    with connection:
        send_frame(connection, message_to_proto(message).SerializeToString())
        send_frame(connection, context_to_proto(context).SerializeToString())
        try:
            status = receive_frame(connection)
            if status == _ERROR:
                raise SiteWorkerError(receive_frame(connection).decode("utf-8", "replace"))
            content = recorddict_from_proto(ProtoRecordDict.FromString(receive_frame(connection)))
            state = recorddict_from_proto(ProtoRecordDict.FromString(receive_frame(connection)))
        except EOFError:
            raise SiteWorkerError(
                "the site worker's process for this message ended without a reply (killed, or out of memory?); "
                "its log is fedlego site's output"
            ) from None
    context.state = state
    return Message(content=content, reply_to=message)


# --------------------------------------------------------------------------- the worker's side


def _exit_when_abandoned(connection: socket.socket) -> None:
    """End this child once the ClientApp process waiting for it has gone (it sends nothing more, so
    the connection reads empty only then)."""

    def watch() -> None:
        with suppress(OSError):
            connection.recv(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def handle(connection: socket.socket, site_app) -> int:
    """The child's work: read one message and its context, run ``site_app`` on them, send back the
    reply's content and the context's state (or the error); the exit code."""
    message = message_from_proto(ProtoMessage.FromString(receive_frame(connection)))
    context = context_from_proto(ProtoContext.FromString(receive_frame(connection)))
    _exit_when_abandoned(connection)
    try:
        reply = site_app(message, context)
    except Exception as error:  # the handler's failure is the reply, as in Flower's ClientApp process
        traceback.print_exc()
        send_frame(connection, _ERROR)
        send_frame(connection, f"{type(error).__name__}: {error}".encode())
        return 1
    send_frame(connection, _REPLY)
    send_frame(connection, recorddict_to_proto(reply.content).SerializeToString())
    send_frame(connection, recorddict_to_proto(context.state).SerializeToString())
    return 0


def _child(connection: socket.socket, listener: socket.socket, site_app) -> None:
    """In a forked child: handle one connection, then exit without running the worker's clean-up."""
    code = 1
    try:
        listener.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = handle(connection, site_app)
    except BaseException:  # a child never returns into the worker's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


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
federation imports nothing more after ``warm_up``)."""


def load_app(reference: str):
    """The ClientApp at ``module:attribute``, imported."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def warm_up(app_reference: str = HANDLERS):
    """Import what handling messages needs, once: the ClientApp, every fedlego module, the
    libraries in ``LAZY_IMPORTS`` and the installed encoder and modality-kind plugins (installing or
    upgrading fedlego or a plugin therefore needs ``fedlego site`` restarted). Returns the app."""
    import fedlego
    from fedlego.common.data.kinds import kind_names
    from fedlego.common.encoders import load_plugins

    site_app = load_app(app_reference)
    for module in pkgutil.walk_packages(fedlego.__path__, prefix="fedlego."):
        if module.name.startswith(("fedlego.common", "fedlego.client")):
            importlib.import_module(module.name)
    for name in LAZY_IMPORTS:
        with suppress(ImportError):
            importlib.import_module(name)
    load_plugins()
    kind_names()
    return site_app


def serve(folder: Path, parent_pid: int, app_reference: str = HANDLERS) -> int:
    """Listen on ``folder/worker.sock`` until the process ``parent_pid`` (``fedlego site``) ends or
    this one is terminated; fork a child per connection to run the ClientApp ``app_reference``
    (imported once, here). ``folder`` must exist with mode 0700."""
    site_app = warm_up(app_reference)
    if folder.stat().st_mode & 0o077:
        raise SystemExit(f"fedlego site worker: {folder} must be private to its user (mode 0700)")

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
            pid = os.fork()
            if pid == 0:
                _child(connection, listener, site_app)
            connection.close()
            children.add(pid)
    finally:
        listener.close()
        path.unlink(missing_ok=True)
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return 0


@contextmanager
def site_worker(
    environment: Mapping[str, str], enabled: bool = True, app_reference: str = HANDLERS
) -> Iterator[dict[str, str]]:
    """A warm worker for this process's site (``fedlego site``), stopped after: yields what the
    SuperNode's environment needs to reach it (nothing when not ``enabled``)."""
    if not enabled:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="fedlego-worker-") as folder:  # mode 0700
        command = [sys.executable, "-m", "fedlego.client.worker", "--folder", folder, "--parent-pid", str(os.getpid())]
        command += ["--app", app_reference]
        process = subprocess.Popen(command, env=dict(environment))
        try:
            yield {WORKER_ENV: str(Path(folder) / SOCKET_NAME)}
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m fedlego.client.worker --folder DIR --parent-pid PID`` (started by ``fedlego site``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="private folder (0700) for the socket")
    parser.add_argument("--parent-pid", type=int, required=True, help="exit when this process has ended")
    parser.add_argument("--app", default=HANDLERS, help=f"the ClientApp as module:attribute (default {HANDLERS})")
    args = parser.parse_args(argv)
    return serve(args.folder, args.parent_pid, args.app)


if __name__ == "__main__":
    raise SystemExit(main())
