"""Ending a run from outside: a stopped coordinator records it (status, audit entry), a run
folder is written by one process at a time, and ``fedlego stop``'s record after Flower killed
the ServerApp before it could write anything."""

from __future__ import annotations

import json
import threading
import time

import pytest

from fedlego.common.audit_head import AuditHead
from fedlego.common.config import RunConfig
from fedlego.common.signing import generate_signing_key
from fedlego.inprocess import InProcessTransport
from fedlego.server.audit import verify_log
from fedlego.server.orchestrator import Federation
from fedlego.server.recorder import RecordError, RunRecorder, lock_run_folder, record_stop
from fedlego.server.results import RunResults
from fedlego.stop import announced_run_id
from tests.test_federation import SMALL


class InterruptedAt(InProcessTransport):
    """Ctrl-C (or Flower ending the ServerApp) while the given phase's message is out."""

    interrupt: str = "train.block"
    error: type[BaseException] = KeyboardInterrupt

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        if message_type == self.interrupt:
            raise self.error
        return super().exchange(message_type, requests, timeout, waiting, received)


def events(folder):
    return [json.loads(line)["event"] for line in (folder / "audit.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_a_coordinator_stopped_from_outside_ends_the_run_on_record(tmp_path, error):
    config = {**SMALL, "out-dir": str(tmp_path)}
    transport = InterruptedAt(config, 3)
    transport.error = error
    with pytest.raises(error):
        Federation(transport, RunConfig.from_flat(config), log=lambda _: None).run()
    results = RunResults.read(tmp_path / "results.json")
    assert results.status == "stopped" and error.__name__ in results.error
    assert events(tmp_path)[-1] == "run-stopped"
    assert verify_log(tmp_path / "audit.jsonl", results.audit_head).ok

    resumed = Federation(InProcessTransport(config, 3), RunConfig.from_flat(config), log=lambda _: None).run()
    assert resumed.status == "completed"
    assert "attempt-unfinished" not in events(tmp_path)  # the stop ended that attempt on record


def test_a_run_folder_is_written_by_one_coordinator_at_a_time(tmp_path):
    config = {**SMALL, "out-dir": str(tmp_path)}
    with lock_run_folder(tmp_path):
        results = Federation(InProcessTransport(config, 3), RunConfig.from_flat(config), log=lambda _: None).run()
    assert results.status == "failed" and "another coordinator process" in results.error
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "audit.jsonl").exists()  # nothing written


def killed_run(tmp_path):
    """A run folder as Flower leaves it when it kills the ServerApp mid-block: results and audit
    log so far, no ending."""
    config = {**SMALL, "out-dir": str(tmp_path)}
    transport = InterruptedAt(config, 3)
    transport.interrupt = "train.blockround"
    with pytest.raises(KeyboardInterrupt):
        Federation(transport, RunConfig.from_flat(config), log=lambda _: None).run()
    results = RunResults.read(tmp_path / "results.json")
    results.status = results.error = None  # as if killed before its own record
    (tmp_path / "results.json").write_text(results.to_json())
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    (tmp_path / "audit.jsonl").write_text("".join(line + "\n" for line in lines[:-1]))


def test_fedlego_stop_records_a_run_the_serverapp_could_not(tmp_path):
    killed_run(tmp_path)
    key = generate_signing_key()
    results = record_stop(tmp_path, "stopped by `fedlego stop` (Flower run 7)", signing_key=key)
    assert results.status == "stopped" and "Flower run 7" in results.error
    entries = len((tmp_path / "audit.jsonl").read_text().splitlines())
    AuditHead(results.run_id, entries, results.audit_head, results.audit_signature).verify(key.public_key())
    assert events(tmp_path)[-1] == "run-stopped"
    assert verify_log(tmp_path / "audit.jsonl", RunResults.read(tmp_path / "results.json").audit_head).ok
    again = record_stop(tmp_path, "a second stop")  # a run that ended on record is left as it is
    assert again.error == results.error and events(tmp_path).count("run-stopped") == 1


def test_a_stop_recorded_without_the_key_leaves_its_head_unsigned_not_stale(tmp_path):
    killed_run(tmp_path)
    stale = RunResults.read(tmp_path / "results.json")
    stale.audit_signature = "ab" * 64  # a signature of an earlier head
    (tmp_path / "results.json").write_text(stale.to_json())
    assert record_stop(tmp_path, "stop").audit_signature is None


def test_fedlego_stop_waits_for_the_coordinator_to_let_go_and_needs_results(tmp_path):
    killed_run(tmp_path)
    with lock_run_folder(tmp_path), pytest.raises(RecordError, match="another coordinator process"):
        record_stop(tmp_path, "stop", wait=1.0)
    assert record_stop(tmp_path / "elsewhere", "stop") is None


def test_fedlego_stop_waits_for_a_coordinator_still_writing_its_first_results(tmp_path):
    """The race `fedlego stop` lost: Flower reports the run finished while the stopped coordinator
    still holds the folder and has not written results.json yet."""
    killed_run(tmp_path / "source")
    written = (tmp_path / "source" / "results.json").read_text()
    out = tmp_path / "out"
    holding = threading.Event()

    def coordinator() -> None:
        with lock_run_folder(out):
            holding.set()
            time.sleep(1.5)
            (out / "audit.jsonl").write_text((tmp_path / "source" / "audit.jsonl").read_text())
            (out / "results.json").write_text(written)

    thread = threading.Thread(target=coordinator)
    thread.start()
    holding.wait(10)
    results = record_stop(out, "stop", wait=30.0)
    thread.join()
    assert results is not None and results.status == "stopped"


def test_fedlego_stop_records_a_run_killed_before_its_first_phase_ended(tmp_path):
    """The race CI hit: Flower kills the ServerApp mid-block (no `finally` runs), before any phase
    ended; its results.json is on disk from the start, so the stop is still recorded."""
    recorder = RunRecorder(tmp_path, RunResults("r", {"rounds": 2}))
    recorder.open({"rounds": 2})
    recorder.close()  # what its death does to the lock; nothing else is written
    on_disk = RunResults.read(tmp_path / "results.json")
    assert on_disk.status is None and on_disk.audit_head is not None
    results = record_stop(tmp_path, "stop")
    assert results is not None and results.status == "stopped"
    assert events(tmp_path) == ["run-started", "run-stopped"]
    assert verify_log(tmp_path / "audit.jsonl", results.audit_head).ok
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["audit.jsonl", "report.html", "results.json", "run.lock"]  # no partial file left


def test_a_resumed_attempt_has_its_results_on_disk_from_the_start(tmp_path):
    """`fedlego run` removes the last attempt's results.json before it resumes: the resumed
    coordinator writes it again at once, so a stop before its next phase ends is still recorded."""
    first = RunRecorder(tmp_path, RunResults("r", {"rounds": 2}))
    first.open({"rounds": 2})
    first.save_progress("describe")  # a checkpoint to resume from
    first.close()
    (tmp_path / "results.json").unlink()  # what prepare_run does
    resumed = RunRecorder(tmp_path, RunResults("r", {"rounds": 2}), log=lambda _: None)
    resumed.open({"rounds": 2})
    resumed.close()
    on_disk = RunResults.read(tmp_path / "results.json")
    assert on_disk.status is None and on_disk.resumed == 1
    assert record_stop(tmp_path, "stop").status == "stopped"


def test_the_run_id_comes_from_the_run_log(tmp_path):
    assert announced_run_id(tmp_path) is None
    (tmp_path / ".flower").mkdir()
    (tmp_path / ".flower" / "run.log").write_text("Loading project\nSuccessfully started run 4242\nphase describe\n")
    assert announced_run_id(tmp_path) == "4242"


def test_fedlego_run_says_when_the_serverapp_ended_without_an_outcome(tmp_path, monkeypatch):
    """results.json exists from a run's start; one still without a status once `flwr run` ended
    (the ServerApp was killed) is an error naming `fedlego stop`, not a result."""
    from fedlego import deploy
    from fedlego.launcher import RunOutcome

    def killed_serverapp(app, run_config, flwr_home, **_):
        (tmp_path / "out" / "results.json").write_text(RunResults("r", {}).to_json())
        return RunOutcome(0, "7", False)

    monkeypatch.setattr(deploy, "stream_run", killed_serverapp)
    expected = r"records no outcome.*fedlego stop --superlink 127\.0\.0\.1:9092 --insecure"
    with pytest.raises(deploy.DeploymentError, match=expected):
        deploy.run_deployment("127.0.0.1:9092", {}, tmp_path / "out")
