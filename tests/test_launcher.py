"""The shared process machinery of ``fedlego simulate`` and the deployment commands: command
lines, connection and run-config files, progress filtering, readiness and ``flwr run`` streaming
(with a stand-in ``flwr`` script, no Flower process)."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

from fedlego import launcher
from fedlego.launcher import (
    LaunchError,
    connection_config,
    free_port,
    is_progress_line,
    prepare_run,
    run_command,
    stop_process_group,
    stream_run,
    superlink_command,
    wait_ready,
    write_connection,
    write_run_config,
)
from fedlego.server.results import RunResults

TAIL = ["--isolation", "subprocess", "--host", "127.0.0.1", "--port", "9093", "--database", ":flwr-in-memory:"]


def test_superlink_command_simulation_mode_is_insecure_with_simulation_flag():
    command = superlink_command("127.0.0.1", 9093, simulation=True)
    assert Path(command[0]).name == "flower-superlink"
    assert command[1:] == ["--insecure", "--simulation", *TAIL]


def test_superlink_command_deployment_mode_insecure():
    command = superlink_command("127.0.0.1", 9093)
    assert command[1:] == ["--insecure", *TAIL]


def test_superlink_command_deployment_mode_tls(tmp_path):
    certs = tmp_path / "consortium"
    command = superlink_command("0.0.0.0", 9093, certs)
    link = (certs / "superlink").resolve()
    assert command[1:8] == [
        "--ssl-ca-certfile",
        str(link / "ca.pem"),
        "--ssl-certfile",
        str(link / "server.pem"),
        "--ssl-keyfile",
        str(link / "server.key"),
        "--enable-supernode-auth",
    ]
    assert "--insecure" not in command and "--simulation" not in command
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_superlink_command_simulation_mode_tls(tmp_path):
    command = superlink_command("127.0.0.1", 9093, tmp_path, simulation=True)
    assert "--insecure" not in command
    assert command.index("--enable-supernode-auth") < command.index("--simulation") < command.index("--isolation")


def test_connection_config_insecure_is_exact_text():
    assert connection_config("127.0.0.1:9093") == (
        '[superlink]\ndefault = "fedlego"\n\n[superlink.fedlego]\naddress = "127.0.0.1:9093"\ninsecure = true\n'
    )


def test_connection_config_tls_names_the_absolute_ca(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = tomllib.loads(connection_config("coordinator:9093", Path("certs") / 'odd "name"' / "ca.pem"))
    assert parsed["superlink"]["default"] == "fedlego"
    connection = parsed["superlink"]["fedlego"]
    assert connection == {
        "address": "coordinator:9093",
        "root-certificates": str(tmp_path.resolve() / "certs" / 'odd "name"' / "ca.pem"),
    }


@pytest.mark.parametrize("address", ["coordinator", ":9093", "host:port", "host:"])
def test_connection_config_rejects_bad_addresses(address):
    with pytest.raises(LaunchError, match="HOST:PORT"):
        connection_config(address)


def test_write_connection_creates_flwr_home(tmp_path):
    path = write_connection(tmp_path / "a" / "home", "127.0.0.1:1")
    assert path == tmp_path / "a" / "home" / "config.toml"
    assert tomllib.loads(path.read_text())["superlink"]["fedlego"] == {"address": "127.0.0.1:1", "insecure": True}


@pytest.mark.parametrize(
    ("line", "ours"),
    [
        ("phase describe: 3 sites\n", True),
        ("  merge  c-index 0.71  \n", True),
        ("\n", False),
        ("   \n", False),
        ("INFO :      Starting Flower SuperLink\n", False),
        ("DEBUG : grpc\n", False),
        ("WARNING : deprecated\n", False),
        ("  warnings.warn(\n", False),
        ("Tip: use --stream\n", False),
        ("Successfully started run 12345\n", False),
        ("Using SuperLink at 127.0.0.1:9093\n", False),
    ],
)
def test_is_progress_line(line, ours):
    assert is_progress_line(line) is ours


def test_write_run_config_round_trips_through_tomllib(tmp_path):
    overrides = {
        "dataset": "tcga-acc",
        "block-rounds": 2,
        "paired-fraction": 0.3,
        "fuse-dp-delta": 1e-5,
        "frequency": False,
        "freeze-encoders": True,
        "out-dir": 'C:\\runs\\"quoted" path',
        "modalities": "clinical,rna",
    }
    path = write_run_config(overrides, tmp_path / "run-config.toml")
    assert tomllib.loads(path.read_text()) == overrides


def test_run_command_with_and_without_federation_config(tmp_path):
    command = run_command(tmp_path / "app", tmp_path / "rc.toml")
    assert Path(command[0]).name == "flwr"
    assert command[1:] == [
        "run",
        str(tmp_path / "app"),
        "fedlego",
        "--stream",
        "--run-config",
        str(tmp_path / "rc.toml"),
    ]
    command = run_command(tmp_path / "app", tmp_path / "rc.toml", federation_config="num-supernodes=3")
    assert command[-2:] == ["--federation-config", "num-supernodes=3"]


def test_prepare_run_starts_from_a_clean_folder(tmp_path):
    out = tmp_path / "out"
    (out / ".flower" / "home").mkdir(parents=True)
    (out / ".flower" / "home" / "stale").write_text("x")
    (out / "results.json").write_text("{}")
    (out / "report.html").write_text("old")
    (out / "packages").mkdir()
    run = prepare_run(out, {"seed": 3})
    assert run.out_dir == out.resolve() and run.flwr_home.is_dir() and not any(run.flwr_home.iterdir())
    assert (run.app / "pyproject.toml").is_file()
    assert tomllib.loads(run.run_config.read_text()) == {"seed": 3, "out-dir": str(out.resolve())}
    assert not (out / "results.json").exists() and not (out / "report.html").exists()
    assert (out / "packages").is_dir()  # only what this run rewrites is removed
    assert run.read_results() is None
    run.results.write_text('{"run_id": "r", "config": {}, "status": "completed"}')
    assert run.read_results() == RunResults("r", {}, status="completed")


# --------------------------------------------------------------------------- processes


def _fake_flwr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A stand-in ``flwr``: ``run`` does ``body``; any other subcommand logs its arguments."""
    calls = tmp_path / "calls.txt"
    script = tmp_path / "flwr"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "if sys.argv[1] != 'run':\n"
        f"    open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "    sys.exit(0)\n" + body
    )
    script.chmod(0o755)
    monkeypatch.setattr(launcher, "tool", lambda name: str(script) if name == "flwr" else name)
    return calls


def test_stream_run_echoes_our_lines_logs_all_and_reads_the_run_id(tmp_path, monkeypatch):
    body = (
        "import os\n"
        "print('INFO :      Starting')\n"
        "print('Successfully started run 4242')\n"
        "print('phase describe: 2 sites')\n"
        "print(os.environ['FLWR_HOME'])\n"
        "print(' '.join(sys.argv[1:]))\n"
        "sys.exit(3)\n"
    )
    _fake_flwr(tmp_path, monkeypatch, body)
    echoed: list[str] = []
    home = tmp_path / "home"
    outcome = stream_run(
        tmp_path / "app",
        tmp_path / "rc.toml",
        home,
        federation_config="num-supernodes=2",
        echo=echoed.append,
        log_path=tmp_path / "run.log",
    )
    assert outcome == launcher.RunOutcome(returncode=3, run_id="4242", timed_out=False)
    expected_args = f"run {tmp_path / 'app'} fedlego --stream --run-config {tmp_path / 'rc.toml'}"
    assert echoed == ["phase describe: 2 sites", str(home), f"{expected_args} --federation-config num-supernodes=2"]
    log = (tmp_path / "run.log").read_text()
    assert "INFO :      Starting" in log and "Successfully started run 4242" in log


def test_stream_run_without_log_writes_no_file(tmp_path, monkeypatch):
    _fake_flwr(tmp_path, monkeypatch, "print('done')\n")
    before = set(tmp_path.iterdir())
    outcome = stream_run(tmp_path / "app", tmp_path / "rc.toml", tmp_path / "home", echo=lambda line: None)
    assert outcome.returncode == 0 and outcome.run_id == "" and not outcome.timed_out
    assert set(tmp_path.iterdir()) == before


def test_stream_run_timeout_stops_the_process_and_the_run(tmp_path, monkeypatch):
    calls = _fake_flwr(tmp_path, monkeypatch, "print('Successfully started run 77', flush=True)\ntime.sleep(120)\n")
    start = time.monotonic()
    outcome = stream_run(tmp_path / "app", tmp_path / "rc.toml", tmp_path / "home", echo=lambda line: None, timeout=1)
    assert time.monotonic() - start < 30
    assert outcome.timed_out and outcome.run_id == "77" and outcome.returncode != 0
    assert calls.read_text() == "stop 77 fedlego\n"


def test_wait_ready_returns_once_health_answers():
    port = free_port()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        wait_ready(f"127.0.0.1:{port}", process, timeout=10)
    finally:
        stop_process_group(process)
        server.shutdown()
        server.server_close()


def test_wait_ready_fails_when_the_process_exits_or_time_runs_out():
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    exited.wait()
    with pytest.raises(LaunchError, match="exited with code 4"):
        wait_ready(f"127.0.0.1:{free_port()}", exited)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        with pytest.raises(LaunchError, match=r"not ready at http://127\.0\.0\.1:"):
            wait_ready(f"127.0.0.1:{free_port()}", alive, timeout=1)
    finally:
        stop_process_group(alive)


def test_stop_process_group_stops_children_too():
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print(flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    process.stdout.readline()
    stop_process_group(process, grace=5)
    assert process.returncode is not None
    deadline = time.monotonic() + 5
    while _live_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_in_group(process.pid) == []


def _live_in_group(group: int) -> list[int]:
    """PIDs of live (not zombie) processes in process group ``group`` (Linux /proc)."""
    live = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(entry.name))
    return live


def test_default_interrupt_gives_a_child_ctrl_c_back_where_the_shell_ignores_it():
    """A background shell starts commands with SIGINT ignored, and Python keeps that: the CLI's
    Ctrl-C handling and the benchmark's SIGINT timeout would then do nothing."""
    handler = "import signal as s; h = s.getsignal(s.SIGINT); print(h == s.SIG_IGN, h == s.default_int_handler)"
    probe = [sys.executable, "-c", handler]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        inherited = subprocess.run(probe, capture_output=True, text=True, check=True).stdout
        restored = subprocess.run(
            probe, capture_output=True, text=True, check=True, preexec_fn=launcher.default_interrupt
        ).stdout
    finally:
        signal.signal(signal.SIGINT, previous)
    assert inherited.split() == ["True", "False"]  # ignored, as the shell left it
    assert restored.split() == ["False", "True"]  # Python's KeyboardInterrupt handler
