"""Signed audit heads: the coordinator sends its log's head with every request, each site keeps
the heads it received, and ``fedlego audit verify --site-copy`` catches a coordinator folder whose
log (and results.json) were rewritten consistently after the fact."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedlego.certs import make_consortium
from fedlego.cli import main
from fedlego.client.app import received
from fedlego.common.audit_head import AuditHead, check_copy, copy_path, read_copy
from fedlego.common.protocol import DescribeRequest, ProtocolError
from fedlego.common.signing import generate_signing_key, load_public_key
from fedlego.messages import to_records
from fedlego.server.audit import GENESIS, _entry_hash, read_entries, verify_log
from fedlego.server.results import RunResults
from tests.test_federation import SITES, SMALL, run


def chain(count: int, run_id: str = "run-1") -> list[dict]:
    entries, previous = [], GENESIS
    for seq in range(count):
        entry = {"seq": seq, "event": "e", "run_id": run_id, "previous": previous}
        entry["hash"] = previous = _entry_hash(entry)
        entries.append(entry)
    return entries


def test_a_head_verifies_only_with_the_coordinators_key_and_unchanged():
    key, other = generate_signing_key(), generate_signing_key()
    head = AuditHead("run-1", 3, "ab" * 32).signed(key)
    head.verify(key.public_key())
    with pytest.raises(ValueError, match="bad signature"):
        head.verify(other.public_key())
    with pytest.raises(ValueError, match="bad signature"):
        AuditHead("run-1", 4, head.head, head.signature).verify(key.public_key())  # another entry count
    with pytest.raises(ValueError, match="unsigned"):
        AuditHead("run-1", 3, head.head).verify(key.public_key())
    assert AuditHead.from_dict(json.loads(json.dumps(head.to_dict()))) == head


@pytest.mark.parametrize(
    "values",
    [
        None,
        [],
        {"run_id": "", "entries": 1, "head": "ab" * 32},
        {"run_id": "r", "entries": -1, "head": "ab" * 32},
        {"run_id": "r", "entries": True, "head": "ab" * 32},
        {"run_id": "r", "entries": 1, "head": "xyz"},
        {"run_id": "r", "entries": 1, "head": "ab" * 32, "signature": "00"},
    ],
)
def test_malformed_heads_are_refused_with_the_field(values):
    with pytest.raises(ValueError, match="audit head"):
        AuditHead.from_dict(values)


def test_a_site_copy_catches_removed_rewritten_and_unsigned_history():
    key = generate_signing_key()
    entries = chain(6)
    heads = [AuditHead("run-1", n, entries[n - 1]["hash"]).signed(key) for n in (2, 4, 6)]
    assert check_copy(entries, heads, key.public_key()) == []
    assert "entries were removed" in check_copy(entries[:5], heads, key.public_key())[0]
    rewritten = chain(6, run_id="run-1")
    rewritten[3]["event"] = "other"
    for index in range(3, 6):  # re-chained from the change on: the log itself verifies
        rewritten[index]["previous"] = rewritten[index - 1]["hash"]
        rewritten[index]["hash"] = _entry_hash(rewritten[index])
    problems = check_copy(rewritten, heads, key.public_key())
    assert len(problems) == 2 and all("rewritten" in p for p in problems)  # heads 4 and 6; head 2 still agrees
    assert "another run" in check_copy(chain(6, "run-2"), heads, None)[0]
    unsigned = [AuditHead("run-1", 2, entries[1]["hash"])]
    assert "unsigned" in check_copy(entries, unsigned, key.public_key())[0]
    assert check_copy(entries, unsigned, None) == []


@pytest.fixture
def _task_identity():
    """Flower's runtime sets the identity of the running app; this test plays the runtime."""
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_site_with_the_coordinators_key_refuses_requests_without_a_good_head(tmp_path, _task_identity):
    make_consortium(tmp_path / "certs", ["tabular_0"])
    site = tmp_path / "certs" / "sites" / "tabular_0"
    node = context({"audit-dir": str(tmp_path / "heads"), "coordinator-public-key": str(site / "coordinator.pub")})
    payload = DescribeRequest().to_payload()
    with pytest.raises(ProtocolError, match="no audit head"):
        received(Message(content=to_records(payload), dst_node_id=1, message_type="query.describe"), node)
    payload.config["audit-head"] = json.dumps(AuditHead("run-1", 1, "ab" * 32).signed(generate_signing_key()).to_dict())
    with pytest.raises(ProtocolError, match="bad signature"):
        received(Message(content=to_records(payload), dst_node_id=1, message_type="query.describe"), node)
    assert not (tmp_path / "heads").exists()  # nothing kept from a forged head


@pytest.fixture(scope="module")
def witnessed(tmp_path_factory):
    """A signed federation whose three sites keep the coordinator's audit heads."""
    root = tmp_path_factory.mktemp("witnessed")
    make_consortium(root / "certs", SITES)
    config = {
        **SMALL,
        "trusted-sites": str(root / "certs" / "coordinator" / "trusted-sites.json"),
        "coordinator-key": str(root / "certs" / "coordinator" / "signing.key"),
    }
    node_configs = {
        index: {
            "partition-id": index,
            "num-partitions": 3,
            "signing-key": str(root / "certs" / "sites" / site / "signing.key"),
            "coordinator-public-key": str(root / "certs" / "sites" / site / "coordinator.pub"),
            "audit-dir": str(root / "heads" / site),
        }
        for index, site in enumerate(SITES)
    }
    results, _ = run(config, root / "run", node_configs=node_configs)
    assert results["status"] == "completed"
    copies = [copy_path(root / "heads" / site, results["run_id"]) for site in SITES]
    return root, results, copies


def verify(root, copies, log=None, results=None) -> int:
    return main(
        [
            "audit",
            "verify",
            str(log or root / "run" / "audit.jsonl"),
            "--results",
            str(results or root / "run" / "results.json"),
            "--coordinator-key",
            str(root / "certs" / "sites" / SITES[0] / "coordinator.pub"),
            *[arg for copy in copies for arg in ("--site-copy", str(copy))],
        ]
    )


def test_every_site_keeps_signed_heads_that_agree_with_the_log(witnessed, capsys):
    root, results, copies = witnessed
    key = load_public_key(root / "certs" / "sites" / SITES[0] / "coordinator.pub")
    for copy in copies:
        heads = read_copy(copy)
        assert len(heads) >= 3 and all(h.run_id == results["run_id"] for h in heads)  # one per message at least
        assert [h.entries for h in heads] == sorted(h.entries for h in heads)  # the log only grows
        for head in heads:
            head.verify(key)
    assert verify(root, copies) == 0
    assert "3 site copies agree; heads signed by the coordinator" in capsys.readouterr().out


def test_a_consistently_rewritten_coordinator_log_is_caught_by_the_site_copies(witnessed, tmp_path, capsys):
    root, _, copies = witnessed
    entries = read_entries(root / "run" / "audit.jsonl")
    refused = next(i for i, e in enumerate(entries) if e["event"] == "package-verified")
    entries[refused]["event"] = "package-refused"  # the coordinator hides that it used this block
    for index in range(refused, len(entries)):
        entries[index]["previous"] = entries[index - 1]["hash"]
        entries[index]["hash"] = _entry_hash(entries[index])
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    results = RunResults.read(root / "run" / "results.json")
    results.audit_head = entries[-1]["hash"]
    (tmp_path / "results.json").write_text(results.to_json())
    assert verify_log(log, results.audit_head).ok  # the rewrite is invisible to the chain alone
    assert verify(root, [], log, tmp_path / "results.json") == 1  # the results' head is no longer signed
    capsys.readouterr()
    assert verify(root, copies, log, tmp_path / "results.json") == 1
    assert "rewritten" in capsys.readouterr().err
