"""Deployment on loopback: a SuperLink and one SuperNode per exported site folder, each its own
process started through the ``fedlego`` command line, secure by default (TLS, SuperNode
authentication with registered keys, signed packages and coordinator-signed models): the
federation through all phases, an unregistered site refused, a site killed mid-fuse."""

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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedlego.common.audit_head import copy_path
from fedlego.common.packaging import model_from_package, parse_model_package
from fedlego.deploy import list_nodes
from fedlego.launcher import default_interrupt, free_port, quiet_environment, stop_process_group

pytestmark = pytest.mark.timeout(600)

FEDLEGO = [sys.executable, "-m", "fedlego.cli"]
MODALITIES = "clinical,rna"
SITES = ["clinical", "paired-0", "rna"]
ALL_SITES = ["clinical", "paired-0", "paired-1", "rna"]  # export-sites --paired-sites 2
FAST = ["dataset=tcga-acc", f"modalities={MODALITIES}", "block-epochs=3", "patience=3", "block-rounds=0"]
FAST.append("min-cell=1")  # paired sites of 8 training patients: disclosure control is tested in test_disclosure


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
    """Start a fedlego command in its own session, output to ``log``, as a terminal would: SIGINT
    is Ctrl-C even when these tests run in the background (where the shell ignores SIGINT, which
    every child would inherit and Python would keep). Python's fault handler is on:
    ``_exit_code`` dumps its threads there when it hangs."""
    with log.open("w") as handle:
        return subprocess.Popen(
            [*FEDLEGO, *args],
            env={**quiet_environment(home), "PYTHONFAULTHANDLER": "1"},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_interrupt,
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


def _exit_code(process: subprocess.Popen, timeout: float, logs: Path) -> int:
    """The exit code of a process from ``_start``; one still running after ``timeout`` s gets
    SIGABRT (its fault handler writes every thread's stack to its log) and fails the test."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        raise AssertionError(f"still running after {timeout:.0f} s; its threads:\n{_logs(logs)}") from None


def _wait_for(predicate, timeout: float, what: str, details=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{details()}")
        time.sleep(0.5)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _logs(folder: Path) -> str:
    return "".join(f"\n--- {p.name}\n{_text(p)[-3000:]}" for p in sorted(folder.glob("*.log")))


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    """``fedlego certs`` for the four sites of ``export-sites --paired-sites 2``, and those sites."""
    root = tmp_path_factory.mktemp("consortium")
    certs = root / "certs"
    args = ["certs", "--out", str(certs)] + [arg for name in ALL_SITES for arg in ("--site", name)]
    result = _fedlego(*args, "--server-name", "127.0.0.1", "--server-name", "localhost", home=root)
    assert result.returncode == 0, result.stderr
    assert "created" in result.stdout and "kept" not in result.stdout
    keys = {p: p.read_bytes() for p in certs.rglob("*") if p.is_file() and p.suffix not in (".json",)}
    again = _fedlego(*args, home=root)  # re-running keeps every key
    assert again.returncode == 0, again.stderr
    assert "kept" in again.stdout
    assert {p: p.read_bytes() for p in keys} == keys
    assert sorted(p.stem for p in (certs / "coordinator" / "node-auth").glob("*.pub")) == ALL_SITES

    sites = root / "sites"
    result = _fedlego(
        "export-sites",
        "--dataset",
        "tcga-acc",
        "--modalities",
        MODALITIES,
        "--paired-sites",
        "2",
        "--out",
        str(sites),
        home=root,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in sites.iterdir() if (p / "site.json").exists()) == ALL_SITES
    return certs, sites


@contextlib.contextmanager
def _secure_deployment(tmp_path: Path, certs: Path, sites: dict[str, tuple[Path, Path]]):
    """A SuperLink with ``--certs`` (ready once its node keys are registered) and one ``fedlego site
    --keys`` per entry name -> (site folder, site certs folder); every process stopped after."""
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    left: dict[int, str] = {}
    try:
        home = tmp_path / "superlink"
        processes["superlink"] = _start(
            ["superlink", "--port", str(port), "--home", str(home), "--certs", str(certs)],
            home,
            logs / "superlink.log",
        )
        _wait_for(
            lambda: (
                "fedlego superlink: ready;" in _text(logs / "superlink.log")
                or processes["superlink"].poll() is not None
            ),
            90,
            "the SuperLink to register the node keys",
            lambda: _logs(logs),
        )
        assert processes["superlink"].poll() is None, _logs(logs)
        for name, (data_dir, site_certs) in sites.items():
            processes[name] = _start(
                [
                    "site",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--data",
                    str(data_dir),
                    "--keys",
                    str(site_certs),
                    "--port",
                    str(free_port()),
                    "--home",
                    str(tmp_path / "homes" / name),
                    "--audit-dir",
                    str(tmp_path / "heads" / name),
                    "--min-cell",  # this TCGA-ACC cut gives paired sites 8 training patients (see FAST)
                    "1",
                ],
                tmp_path / "homes" / name,
                logs / f"site-{name}.log",
            )
        yield port, processes, logs
    finally:
        left.update(_stop_all(list(processes.values()), str(tmp_path)))
    assert left == {}, f"processes still running after stop: {left}"
    assert all(p.poll() is not None for p in processes.values())


def test_export_sites_writes_site_folders(tmp_path):
    result = _fedlego(
        "export-sites", "--dataset", "tcga-acc", "--modalities", MODALITIES, "--out", str(tmp_path), home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "site.json").exists()) == SITES
    manifest = json.loads((tmp_path / "paired-0" / "site.json").read_text())
    assert sorted(manifest["modalities"]) == ["clinical", "rna"]
    assert (tmp_path / "rna" / "split.csv").exists()


def test_certs_or_insecure_is_required_and_bad_folders_fail_fast(tmp_path, consortium):
    certs, sites = consortium
    home = tmp_path / "home"
    result = _fedlego("superlink", "--port", str(free_port()), "--home", str(home), home=tmp_path)
    assert result.returncode != 0
    assert "TLS" in result.stderr and "--certs" in result.stderr and "--insecure" in result.stderr

    result = _fedlego("run", "--superlink", "127.0.0.1:9092", "--out", str(tmp_path / "out"), home=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "TLS" in result.stderr and "--certs" in result.stderr

    site = tmp_path / "site"
    site.mkdir()
    result = _fedlego("site", "--superlink", "127.0.0.1:9092", "--data", str(site), home=tmp_path)
    assert result.returncode != 0
    assert "TLS" in result.stderr and "--keys" in result.stderr and "--insecure" in result.stderr

    # A site certs folder without its node key is refused before any connection.
    result = _fedlego(
        "site", "--superlink", "127.0.0.1:9092", "--data", str(sites / "rna"), "--keys", str(certs), home=tmp_path
    )
    assert result.returncode != 0
    assert "node-auth" in result.stderr and "fedlego certs" in result.stderr

    # --insecure stays possible, explicitly and loudly.
    log = tmp_path / "insecure.log"
    superlink = _start(["superlink", "--port", str(free_port()), "--home", str(home), "--insecure"], home, log)
    try:
        _wait_for(lambda: "ready (insecure)" in _text(log) or superlink.poll() is not None, 60, "an insecure SuperLink")
    finally:
        left = _stop_all([superlink], str(home))
    assert "ready (insecure)" in _text(log) and "WARNING: --insecure" in _text(log), _text(log)
    assert left == {}

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
    for security in (["--insecure"], ["--keys", str(certs / "sites" / "clinical")]):
        result = _fedlego(
            "site",
            "--superlink",
            f"127.0.0.1:{free_port()}",
            "--data",
            str(site),
            *security,
            home=tmp_path,
            timeout=60,
        )
        assert result.returncode != 0
        assert "clinical.csv" in result.stderr and "duplicate patient ids" in result.stderr


def test_unregistered_site_is_refused(tmp_path, consortium):
    """A site whose node key the SuperLink never registered cannot join; a registered one can."""
    start = time.monotonic()
    certs, sites = consortium
    rogue = tmp_path / "rogue-certs"
    rogue.mkdir()
    for name in ("ca.pem", "signing.key", "coordinator.pub"):
        (rogue / name).write_bytes((certs / "sites" / "rna" / name).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    (rogue / "node-auth").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    (rogue / "node-auth").chmod(0o600)
    deployment = {"clinical": (sites / "clinical", certs / "sites" / "clinical"), "rogue": (sites / "rna", rogue)}
    with _secure_deployment(tmp_path, certs, deployment) as (_port, processes, logs):
        _wait_for(
            lambda: (
                "SuperNode ID:" in _text(logs / "site-clinical.log")
                and "Failed to activate SuperNode" in _text(logs / "site-rogue.log")
            ),
            60,
            "the registered site to join and the unregistered one to be refused",
            lambda: _logs(logs),
        )
        nodes = list_nodes(tmp_path / "superlink" / "control")
        assert len(nodes) == len(ALL_SITES)  # the registered keys, and no other
        assert [n["status"] for n in nodes].count("online") == 1, nodes
        assert "SuperNode ID:" not in _text(logs / "site-rogue.log")
        assert processes["clinical"].poll() is None
        # preflight: the coordinator sees 1 of 4 sites online; a registered key passes, the rogue's fails
        address = f"127.0.0.1:{_port}"
        ran = _fedlego("run", "--check", "--superlink", address, "--certs", str(certs), "--out", str(tmp_path / "o"),
                       "--set", *FAST, home=tmp_path)  # fmt: skip
        assert ran.returncode == 1 and "1 of 4 registered sites online" in ran.stdout, ran.stdout + ran.stderr
        registered = _fedlego("site", "--check", "--superlink", address, "--data", str(sites / "rna"),
                              "--keys", str(certs / "sites" / "rna"), home=tmp_path)  # fmt: skip
        assert registered.returncode == 0 and "ok   node key accepted" in registered.stdout, registered.stdout
        refused = _fedlego("site", "--check", "--superlink", address, "--data", str(sites / "rna"),
                           "--keys", str(rogue), home=tmp_path)  # fmt: skip
        assert refused.returncode == 1 and "FAIL node key accepted" in refused.stdout, refused.stdout
        assert "ok   SuperLink answers (TLS and health)" in refused.stdout  # only the node key failed
    print(f"unregistered site test wall time {time.monotonic() - start:.1f} s")


def test_secure_federation_survives_a_site_killed_mid_fuse(tmp_path, consortium):
    """Separate SuperLink and SuperNode processes on 127.0.0.1 with TLS, SuperNode authentication
    and signed packages; SIGKILL one of two paired sites once the fuse phase starts: the run
    finishes without it, with every package verified and the models signed."""
    start = time.monotonic()
    certs, sites = consortium
    out = tmp_path / "out"
    with _secure_deployment(tmp_path, certs, {name: (sites / name, certs / "sites" / name) for name in ALL_SITES}) as (
        port,
        processes,
        logs,
    ):
        run = _start(
            [
                "run",
                "--superlink",
                f"127.0.0.1:{port}",
                "--certs",
                str(certs),
                "--out",
                str(out),
                "--set",
                *FAST,
                "fuse-rounds=1",
                f"min-sites={len(ALL_SITES)}",
                "min-responses=1",
                "allow-partial=true",  # without it the run is recorded incomplete (test_federation)
                "wait-timeout=120",
                "phase-timeout=20",  # a warm site answers in seconds: the killed one costs 2 x 20 s
                "--timeout",
                "480",
            ],
            tmp_path,
            logs / "run.log",
        )
        processes["run"] = run
        _wait_for(
            lambda: "phase fuse:" in _text(out / ".flower" / "run.log") or run.poll() is not None,
            400,
            "the fuse phase",
            lambda: _logs(logs),
        )
        assert run.poll() is None, _logs(logs)
        fuse_started = time.monotonic()
        os.killpg(processes["paired-1"].pid, signal.SIGKILL)  # the site and its SuperNode, no clean-up
        processes["paired-1"].wait(timeout=10)
        try:
            run.wait(timeout=420)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish after the site was killed\n{_logs(logs)}")
        print(f"fuse to end after the kill: {time.monotonic() - fuse_started:.1f} s")
        details = _text(logs / "run.log") + _logs(logs)
        assert run.returncode == 0, details

    results = json.loads((out / "results.json").read_text())
    print({name: round(phase["seconds"], 1) for name, phase in results["phases"].items()})
    print(results["failures"])
    assert results["status"] == "completed", details
    assert results["gaps"] == ["paired site paired-1 is missing from the last fuse round"]
    assert any(f["site"] == "paired-1" and f["phase"] == "fuse" for f in results["failures"]), results["failures"]
    # Only the killed site failed (Flower's "Node Unavailable" replies are mapped back to it).
    assert {f["site"] for f in results["failures"]} == {"paired-1"}, results["failures"]
    # Everything else went through TLS, SuperNode authentication and signature checks.
    assert results["signatures"] == {"required": True, "models_signed": True}
    assert sorted(results["sites"]) == sorted(ALL_SITES) and results["refused"] == []
    # Every message ran in a child of its site's warm worker: none had to start flwr-clientapp anew.
    assert "site worker cannot be reached" not in details
    assert "root-certificates" in (out / ".flower" / "home" / "config.toml").read_text()
    for name in ("merged.pb", "fused.pb"):
        package = parse_model_package((out / "packages" / name).read_bytes(), name)
        assert package.signature.signer == "coordinator"
        assert model_from_package(package) is not None
    assert results["metrics"]["merge"] and results["metrics"]["fuse"]
    assert "paired-0" in results["rounds"]["fuse"]["participants"][-1]
    assert (out / "packages" / "fused.pb").exists()
    # Every hospital kept the coordinator's signed audit heads, and they agree with its log.
    copies = [copy_path(tmp_path / "heads" / name, results["run_id"]) for name in ALL_SITES]
    verified = _fedlego(
        "audit",
        "verify",
        str(out / "audit.jsonl"),
        "--results",
        str(out / "results.json"),
        "--coordinator-key",
        str(certs / "sites" / "clinical" / "coordinator.pub"),
        *[arg for copy in copies for arg in ("--site-copy", str(copy))],
        home=tmp_path,
    )
    assert verified.returncode == 0 and "4 site copies agree" in verified.stdout, verified.stdout + verified.stderr
    print(f"killed-site test wall time {time.monotonic() - start:.1f} s")


def test_ctrl_c_leaves_the_run_going_and_fedlego_stop_ends_it_on_record(tmp_path, consortium):
    """Ctrl-C on `fedlego run` says that the run goes on and how to stop it; `fedlego stop` stops it
    at the SuperLink and the run folder records the stop (status, a verifiable audit entry)."""
    certs, sites = consortium
    out = tmp_path / "out"
    deployment = {name: (sites / name, certs / "sites" / name) for name in SITES}
    with _secure_deployment(tmp_path, certs, deployment) as (port, processes, logs):
        superlink = ["--superlink", f"127.0.0.1:{port}", "--certs", str(certs), "--out", str(out)]
        settings = [*FAST, "block-epochs=200", "patience=200", f"min-sites={len(SITES)}", "wait-timeout=120"]
        run = _start(["run", *superlink, "--set", *settings], tmp_path, logs / "run.log")
        processes["run"] = run
        _wait_for(
            lambda: "phase block" in _text(out / ".flower" / "run.log") or run.poll() is not None,
            240,
            "the block phase",
            lambda: _logs(logs),
        )
        run.send_signal(signal.SIGINT)
        assert _exit_code(run, 120, logs) == 130, _logs(logs)
        said = _text(logs / "run.log")
        assert "goes on at the SuperLink" in said and "fedlego stop" in said and "Traceback" not in said, said

        stopped = _fedlego("stop", *superlink, home=tmp_path, timeout=180)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr + _logs(logs)
        assert "status stopped" in stopped.stdout, stopped.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "stopped" and results["error"], results.get("error")
    entries = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert entries[-1]["event"] == "run-stopped" and [e["event"] for e in entries].count("run-stopped") == 1
    verified = _fedlego(
        "audit", "verify", str(out / "audit.jsonl"), "--results", str(out / "results.json"), home=tmp_path
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
