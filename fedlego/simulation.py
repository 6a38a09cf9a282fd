"""``fedlego simulate``: the federation on Flower's simulation engine, on this machine.

Starts a private SuperLink on a free loopback port with an isolated ``FLWR_HOME``, runs the
fedlego Flower app with ``flwr run --stream`` (one simulated SuperNode per scenario site), and
stops every process it started, whatever happens (the process machinery is ``fedlego.launcher``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedlego.launcher import background_superlink, free_port, prepare_run, stream_run, write_connection
from fedlego.server.results import RunResults


@contextmanager
def simulation_superlink(flwr_home: Path, log_path: Path) -> Iterator[int]:
    """A private SuperLink in simulation mode on a free loopback port; yields the port. Stopped
    after, with every helper process (SuperExec, app processes, Ray) this FLWR_HOME started."""
    port = free_port()
    with background_superlink(flwr_home, log_path, port, simulation=True, stop_helpers=True):
        yield port


def run_simulation(
    overrides: Mapping[str, Any],
    n_sites: int,
    out_dir: Path,
    gpu_fraction: float = 0.0,
    timeout: float | None = None,
    resume: bool = False,
) -> RunResults:
    """Run the federation with ``n_sites`` simulated sites; returns its results."""
    out_dir = Path(out_dir).resolve()
    if not resume and (out_dir / "checkpoint").exists():
        shutil.rmtree(out_dir / "checkpoint")  # a new run; the audit log keeps the old one's entries
    run = prepare_run(out_dir, overrides)
    resources = f"num-supernodes={n_sites} client-resources-num-cpus=1"
    if gpu_fraction > 0:
        resources += f" client-resources-num-gpus={gpu_fraction}"
    with simulation_superlink(run.flwr_home, run.work / "superlink.log") as port:
        write_connection(run.flwr_home, f"127.0.0.1:{port}")
        stream_run(run.app, run.run_config, run.flwr_home, federation_config=resources, timeout=timeout)
    results = run.read_results()
    if results is None or results.status is None:
        what = "no results" if results is None else "no outcome: its coordinator ended before recording one"
        raise RuntimeError(f"the federation wrote {what} (see {run.work / 'superlink.log'})")
    return results
