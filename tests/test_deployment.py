"""Deployment on loopback: a SuperLink and one SuperNode per exported site folder, each its own
process started through the ``fedlego`` command line, and the federation run through all phases."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlego.common.packaging import model_from_package, parse_model_package
from fedlego.simulation import _wait_healthy, free_port, quiet_environment, stop_process_group

pytestmark = pytest.mark.timeout(600)

FEDLEGO = [sys.executable, "-m", "fedlego.cli"]
MODALITIES = "clinical,rna"
SITES = ["clinical", "paired-0", "rna"]


def _fedlego(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a fedlego command in its own session; on timeout its whole process group is stopped."""
    process = subprocess.Popen(
        [*FEDLEGO, *args],
        env=quiet_environment(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop_process_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _start(args: list[str], home: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(
            [*FEDLEGO, *args],
            env=quiet_environment(home),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _processes_mentioning(marker: str) -> dict[int, str]:
    """Live processes whose command line or environment mentions ``marker`` (our temp folder)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (marker in cmdline or marker in environ):
            found[int(entry.name)] = cmdline[:200]
    return found


def _stop_all(processes: list[subprocess.Popen], marker: str) -> dict[int, str]:
    """Stop every process group we started; return (and kill) any descendant still alive after 15 s.

    Flower's SuperLink starts its SuperExec in a session of its own, which leaves by itself
    (it watches its parent) shortly after the SuperLink stops.
    """
    for process in reversed(processes):
        stop_process_group(process)
    deadline = time.monotonic() + 15
    left = _processes_mentioning(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_mentioning(marker)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def test_export_sites_writes_site_folders(tmp_path):
    result = _fedlego(
        "export-sites", "--scenario", "tcga-acc", "--modalities", MODALITIES, "--out", str(tmp_path), home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "site.json").exists()) == SITES
    manifest = json.loads((tmp_path / "paired-0" / "site.json").read_text())
    assert sorted(manifest["modalities"]) == ["clinical", "rna"]
    assert (tmp_path / "rna" / "split.csv").exists()


def test_insecure_is_required_and_bad_site_folder_fails_fast(tmp_path):
    home = tmp_path / "home"
    result = _fedlego("superlink", "--port", str(free_port()), "--home", str(home), home=tmp_path)
    assert result.returncode != 0
    assert "TLS" in result.stderr and "--insecure" in result.stderr

    site = tmp_path / "site"
    site.mkdir()
    result = _fedlego("site", "--superlink", "127.0.0.1:9092", "--data-dir", str(site), home=tmp_path)
    assert result.returncode != 0
    assert "TLS" in result.stderr and "--insecure" in result.stderr

    (site / "site.json").write_text(
        json.dumps(
            {
                "name": "broken",
                "task": "survival",
                "labels": "labels.csv",
                "modalities": {"clinical": {"kind": "tabular", "path": "clinical.csv"}},
            }
        )
    )
    (site / "labels.csv").write_text("id,time,event\np1,10,1\np2,20,0\n")
    (site / "clinical.csv").write_text("id,age\np1,50\np1,51\n")
    # No SuperLink listens on this port: the folder must be rejected before any connection.
    result = _fedlego(
        "site",
        "--superlink",
        f"127.0.0.1:{free_port()}",
        "--data-dir",
        str(site),
        "--insecure",
        home=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert "clinical.csv" in result.stderr and "duplicate patient ids" in result.stderr


def test_federation_across_processes(tmp_path):
    start = time.monotonic()
    marker = str(tmp_path)
    sites = tmp_path / "sites"
    result = _fedlego(
        "export-sites", "--scenario", "tcga-acc", "--modalities", MODALITIES, "--out", str(sites), home=tmp_path
    )
    assert result.returncode == 0, result.stderr

    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []
    try:
        superlink = _start(
            ["superlink", "--port", str(port), "--home", str(tmp_path / "superlink"), "--insecure"],
            tmp_path / "superlink",
            logs / "superlink.log",
        )
        processes.append(superlink)
        _wait_healthy(port, superlink)
        for name in SITES:
            processes.append(
                _start(
                    [
                        "site",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--data-dir",
                        str(sites / name),
                        "--port",
                        str(free_port()),
                        "--home",
                        str(tmp_path / "homes" / name),
                        "--insecure",
                    ],
                    tmp_path / "homes" / name,
                    logs / f"site-{name}.log",
                )
            )
        out = tmp_path / "out"
        run = _fedlego(
            "run",
            "--superlink",
            f"127.0.0.1:{port}",
            "--insecure",
            "--out",
            str(out),
            "--set",
            "dataset=tcga-acc",
            f"modalities={MODALITIES}",
            "block-epochs=3",
            "patience=3",
            "block-rounds=0",
            "fuse-rounds=1",
            f"min-sites={len(SITES)}",
            f"min-responses={len(SITES)}",
            "wait-timeout=120",
            "phase-timeout=240",
            "--timeout",
            "420",
            home=tmp_path,
            timeout=480,
        )
        details = run.stdout + run.stderr + "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in logs.iterdir())
        assert run.returncode == 0, details
        assert all(p.poll() is None for p in processes), details  # nothing crashed during the run

        results = json.loads((out / "results.json").read_text())
        print({name: round(phase["seconds"], 1) for name, phase in results["phases"].items()})
        assert results["status"] == "completed", details
        assert sorted(results["sites"]) == SITES
        assert results["failures"] == []
        for phase in ("merge", "fuse"):
            assert results["metrics"][phase], f"no {phase} metrics"
        assert "LegoMerge" in run.stdout or "merge" in run.stdout
        for name in ("merged.pb", "fused.pb"):
            model = model_from_package(parse_model_package((out / "packages" / name).read_bytes(), name))
            assert model is not None
    finally:
        left = _stop_all(processes, marker)
        print(f"deployment e2e wall time {time.monotonic() - start:.1f} s")
    assert left == {}, f"processes still running after stop: {left}"
    assert all(p.poll() is not None for p in processes)
