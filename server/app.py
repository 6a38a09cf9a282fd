"""The fedlego ServerApp: reads the run config and runs the federation's phases."""

from __future__ import annotations

import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlego.common.config import RunConfig
from fedlego.server.flower_transport import FlowerTransport
from fedlego.server.orchestrator import Federation

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run every phase; results and packages go to the run config's out-dir."""
    settings = RunConfig.from_flat(context.run_config)
    Federation(FlowerTransport(grid), settings, log=lambda line: print(line, flush=True)).run()
