"""The hash-chained audit log and ``fedlego audit verify``."""

import json

import pytest

from fedlego.cli import main
from fedlego.server.audit import AuditLog, verify_log
from fedlego.server.results import RunResults


@pytest.fixture
def log(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    for index in range(5):
        audit.append("package-received", site=f"site-{index}", sha256="ab" * 32)
    return tmp_path / "audit.jsonl", audit.head


def rewrite(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_an_intact_log_verifies_and_reopening_continues_the_chain(log):
    path, head = log
    assert verify_log(path, head).ok
    reopened = AuditLog(path)
    new_head = reopened.append("run-resumed")
    report = verify_log(path, new_head)
    assert report.ok and report.entries == 6


def test_a_modified_entry_is_detected(log):
    path, head = log
    lines = path.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["site"] = "someone-else"
    lines[2] = json.dumps(entry, sort_keys=True)
    rewrite(path, lines)
    report = verify_log(path, head)
    assert not report.ok and "line 3" in report.problem and "modified" in report.problem


def test_a_deleted_entry_is_detected(log):
    path, head = log
    lines = path.read_text().splitlines()
    rewrite(path, lines[:1] + lines[2:])
    report = verify_log(path, head)
    assert not report.ok and "chain broken" in report.problem


def test_entries_cut_off_the_end_are_detected_with_the_recorded_head(log):
    path, head = log
    rewrite(path, path.read_text().splitlines()[:-1])
    assert verify_log(path).ok  # the chain alone cannot see it...
    assert "removed from the end" in verify_log(path, head).problem  # ...the recorded head can


def test_a_broken_log_is_never_extended(log):
    path, _ = log
    lines = path.read_text().splitlines()
    rewrite(path, lines[1:])
    with pytest.raises(ValueError, match="refusing to extend"):
        AuditLog(path)


def test_cli_verify(log, tmp_path, capsys):
    path, head = log
    results = tmp_path / "results.json"
    results.write_text(RunResults("run", {}, audit_head=head).to_json())
    assert main(["audit", "verify", str(path), "--results", str(results)]) == 0
    assert "chain intact" in capsys.readouterr().out
    rewrite(path, path.read_text().splitlines()[:-1])
    assert main(["audit", "verify", str(path), "--results", str(results)]) == 1
    assert "TAMPERED" in capsys.readouterr().err
