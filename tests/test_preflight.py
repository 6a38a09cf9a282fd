"""Preflight findings without a SuperLink: each check fails on its own with what was seen (the
checks against a real SuperLink are in test_deployment)."""

from fedlego.cli import main
from fedlego.launcher import free_port
from fedlego.preflight import superlink_reachable


def test_an_unknown_name_fails_at_resolution_and_stops_there():
    findings = superlink_reachable("no-such-host.invalid:9092", None)
    assert [f.ok for f in findings] == [False] and "no-such-host.invalid" in findings[0].what


def test_a_closed_port_fails_at_tcp():
    findings = superlink_reachable(f"127.0.0.1:{free_port()}", None)
    assert [f.ok for f in findings] == [True, False] and "TCP" in findings[1].what


def test_site_check_reports_a_bad_data_folder_and_exits_1(tmp_path, capsys):
    code = main(["site", "--check", "--insecure", "--superlink", f"127.0.0.1:{free_port()}", "--data", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAIL data folder {tmp_path}" in out and "FAIL TCP" in out and "checks passed" in out
