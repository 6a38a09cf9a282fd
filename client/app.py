"""The ClientApp Flower loads (``fedlego.client.app:app``).

It imports nothing heavy: with ``FEDLEGO_SITE_WORKER`` set (``fedlego site`` sets it for its
SuperNode) it hands each message to the site's warm worker (``client.worker``), which has PyTorch
and fedlego imported already; otherwise, or when the worker cannot be reached, it runs the
handlers (``client.handlers``) in this process, as in simulation.
"""

from __future__ import annotations

import os
import sys

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedlego.client.worker import WORKER_ENV, WorkerUnavailable, forward

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


class SiteClientApp(ClientApp):
    """fedlego's ClientApp: the site's warm worker when it has one, else the handlers here."""

    def __call__(self, message: Message, context: Context) -> Message:
        socket_path = os.environ.get(WORKER_ENV)
        if socket_path:
            try:
                return forward(socket_path, message, context)
            except WorkerUnavailable as error:
                print(f"fedlego: {error}; handling this message in the ClientApp process", file=sys.stderr, flush=True)
        from fedlego.client.handlers import site_app

        return site_app(message, context)


app = SiteClientApp()
