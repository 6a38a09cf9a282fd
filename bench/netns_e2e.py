"""``make deploy-e2e``: a coordinator and four hospitals, each on its own host (a Linux network
namespace with its own address on a private bridge), running the real ``fedlego`` commands with TLS
and SuperNode authentication. Needs root; never part of ``make test``.

    python bench/netns_e2e.py --out docs/benchmarks

What it does, in order (each step timed, every check recorded in OUT/deploy-e2e.md and .json):
1. Hosts: a bridge and one namespace per party on 10.231.40.0/24; the hospitals reach the
   coordinator by the DNS name its certificate holds (``/etc/netns/<ns>/hosts``); nftables in the
   coordinator's namespace lets the hospitals reach the SuperLink port and nothing else.
2. Keys the way hospitals hold them: the CA makes the consortium (no site keys); each hospital runs
   ``fedlego certs request`` on its host, the CA ``fedlego certs sign``, and only ``ca.pem`` and
   ``coordinator.pub`` go back.
3. A hospital refuses an impostor: a SuperLink with another CA's certificate for the same name.
4. A run to completion (``fedlego run`` on the coordinator's host), then ``fedlego audit verify``
   against every hospital's copy of the signed audit heads.
5. Failures that matter: a hospital's host disappears mid-fuse (its link goes down), and the
   coordinator (SuperLink and ServerApp) is SIGKILLed mid-fuse, started again, and the run
   resubmitted with the same ``--out``: it resumes without redoing finished phases; the lost
   hospital is recorded as failed and the run completes (``allow-partial``: the gap stays on record).
Everything it made (namespaces, links, bridge, hosts files, processes, folders) is removed after,
also when a step fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from fedlego.common.audit_head import copy_path
from fedlego.launcher import processes_with_home, quiet_environment, stop_process_group

SUBNET = "10.231.40"
COORDINATOR_NAME = "coordinator.consortium.test"
PORT = 9092
CLOSED_PORT = 9099
"""A port the coordinator listens on that the firewall must keep from the hospitals."""
HOSPITALS = ["baseline", "labs", "paired-0", "paired-1"]
"""The four sites of ``fedlego export-sites --dataset pbc --paired-sites 2`` (each site over the
disclosure threshold: the run keeps the default min-cell)."""
ADDRESSES = {"coordinator": 1, **{name: 11 + i for i, name in enumerate(HOSPITALS)}, "impostor": 66, "victim": 99}
"""Host part of each party's address; ``victim`` is a hospital host whose name resolution points at
the impostor."""
SETTINGS = [
    "dataset=pbc",
    "block-epochs=20",
    "patience=20",
    "block-rounds=0",
    "fuse-rounds=4",
    "wait-timeout=180",
    "phase-timeout=90",
]
FEDLEGO = [sys.executable, "-m", "fedlego.cli"]


class E2EError(RuntimeError):
    """A step of the end-to-end test failed."""


@dataclass
class Check:
    """One recorded check: what was verified, whether it held, and the evidence."""

    what: str
    ok: bool
    detail: str = ""


@dataclass
class Record:
    """Every step's wall time and every check."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(what, ok, detail))
        print(f"  {'ok  ' if ok else 'FAIL'} {what}{f' ({detail})' if detail else ''}", flush=True)
        if not ok:
            raise E2EError(f"{what}: {detail}")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """A system command (ip, nft); E2EError with its output when it fails and ``check``."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise E2EError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip()}")
    return result


class Hosts:
    """The bridge, one namespace per party, their links and hosts files; ``close`` removes them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.bridge = f"flbr{tag}"
        self.made_namespaces: list[str] = []
        self.made_links: list[str] = [self.bridge]

    def namespace(self, party: str) -> str:
        return f"fle{self.tag}-{party}"

    def address(self, party: str) -> str:
        return f"{SUBNET}.{ADDRESSES[party]}"

    def open(self, parties: list[str], coordinator_at: dict[str, str]) -> None:
        """Every party's host; ``coordinator_at[party]``: the party that party's hosts file names
        as the coordinator (default the coordinator)."""
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for index, party in enumerate(parties):
            ns, root_end, host_end = self.namespace(party), f"fv{self.tag}{index}", f"fp{self.tag}{index}"
            sh("ip", "netns", "add", ns)
            self.made_namespaces.append(ns)
            sh("ip", "link", "add", root_end, "type", "veth", "peer", "name", host_end)
            self.made_links.append(root_end)
            sh("ip", "link", "set", root_end, "master", self.bridge)
            sh("ip", "link", "set", root_end, "up")
            sh("ip", "link", "set", host_end, "netns", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", host_end, "name", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.address(party)}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            hosts = Path("/etc/netns") / ns / "hosts"
            hosts.parent.mkdir(parents=True, exist_ok=True)
            target = self.address(coordinator_at.get(party, "coordinator"))
            hosts.write_text(f"127.0.0.1 localhost\n{target} {COORDINATOR_NAME}\n")
        self.firewall()

    def firewall(self) -> None:
        """The coordinator's host accepts only loopback, replies, and the SuperLink port from the subnet."""
        rules = (
            "table inet fedlego_e2e {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy drop;\n"
            "    iif lo accept\n"
            "    ct state established,related accept\n"
            f"    ip saddr {SUBNET}.0/24 tcp dport {PORT} accept\n"
            "  }\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.namespace("coordinator"), "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
        )

    def link_down(self, party: str) -> None:
        """The party's host disappears from the network (its link goes down)."""
        sh("ip", "netns", "exec", self.namespace(party), "ip", "link", "set", "eth0", "down")

    def close(self) -> None:
        for ns in reversed(self.made_namespaces):
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        for link in reversed(self.made_links):
            if sh("ip", "link", "show", link, check=False).returncode == 0:
                sh("ip", "link", "del", link, check=False)


class Parties:
    """The fedlego processes of the test, each on its host; ``stop`` ends them and their helpers."""

    def __init__(self, hosts: Hosts, root: Path) -> None:
        self.hosts, self.root = hosts, root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.homes: list[Path] = []

    def command(self, party: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """A fedlego command on ``party``'s host, waited for."""
        home = self.root / "homes" / f"{party}-cli"
        home.mkdir(parents=True, exist_ok=True)
        argv = ["ip", "netns", "exec", self.hosts.namespace(party), *FEDLEGO, *args]
        return subprocess.run(
            argv, env=quiet_environment(home), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, name: str, party: str, args: list[str]) -> subprocess.Popen:
        """A long-running fedlego command on ``party``'s host, logged to logs/<name>.log."""
        home = self.root / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        self.homes.append(home)
        with (self.logs / f"{name}.log").open("a") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.hosts.namespace(party), *FEDLEGO, *args],
                env=quiet_environment(home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything it started (a crash: no clean-up)."""
        with suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=30)
        for pid in processes_with_home(self.root / "homes" / name):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self, name: str | None = None) -> None:
        names = [name] if name else list(reversed(self.processes))
        for each in names:
            stop_process_group(self.processes[each])
        homes = [self.root / "homes" / n for n in names]
        deadline = time.monotonic() + 20
        while any(processes_with_home(h) for h in homes) and time.monotonic() < deadline:
            time.sleep(0.5)
        for home in homes:
            for pid in processes_with_home(home):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise E2EError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def reachable(parties: Parties, party: str, host: str, port: int) -> bool:
    """Whether a TCP connection from ``party``'s host to host:port opens within 3 s."""
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(3)\n"
        f"sys.exit(0 if s.connect_ex(({host!r},{port}))==0 else 1)\n"
    )
    argv = ["ip", "netns", "exec", parties.hosts.namespace(party), sys.executable, "-c", probe]
    return subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode == 0


def _ok(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise E2EError(f"{what} exited {result.returncode}: {(result.stdout + result.stderr).strip()[-1500:]}")
    return result


class Scenario:
    """The steps of the test; ``record`` keeps their times and checks."""

    def __init__(self, hosts: Hosts, parties: Parties, root: Path) -> None:
        self.hosts, self.parties, self.root, self.record = hosts, parties, root, Record()
        self.consortium = root / "coordinator" / "consortium"

    def step(self, name: str, action: Callable[[], None]) -> None:
        print(f"== {name}", flush=True)
        start = time.monotonic()
        action()
        self.record.steps.append((name, time.monotonic() - start))

    def keys(self) -> None:
        parties, record = self.parties, self.record
        _ok(
            parties.command("coordinator", ["certs", "--out", str(self.consortium), "--server-name", COORDINATOR_NAME]),
            "certs",
        )
        for site in HOSPITALS:
            keys = self.root / site / "keys"
            _ok(
                parties.command(site, ["certs", "request", "--site", site, "--out", str(keys)]),
                f"{site}: certs request",
            )
            request = self.root / "coordinator" / "requests" / f"{site}.json"
            request.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(keys / "request.json", request)  # the only file that travels to the CA
            _ok(
                parties.command(
                    "coordinator", ["certs", "sign", "--out", str(self.consortium), "--request", str(request)]
                ),
                "sign",
            )
            for name in ("ca.pem", "coordinator.pub"):  # the only files that travel back
                shutil.copy(self.consortium / "sites" / site / name, keys / name)
        private = [
            p for p in self.consortium.rglob("*") if p.name in ("signing.key", "node-auth") and "sites" in p.parts
        ]
        record.check("no hospital private key exists at the coordinator", not private, f"{len(private)} found")
        status = _ok(parties.command("coordinator", ["certs", "status", "--out", str(self.consortium)]), "status")
        record.check(
            "`certs status` lists the certificates", "days left" in status.stdout, status.stdout.splitlines()[0]
        )
        exported = parties.command(
            "coordinator",
            ["export-sites", "--dataset", "pbc", "--paired-sites", "2", "--out", str(self.root / "data")],
        )
        _ok(exported, "export-sites")
        for site in HOSPITALS:  # each hospital holds its own folder only
            shutil.move(str(self.root / "data" / site), str(self.root / site / "data"))

    def superlink(self, attempt: int) -> None:
        self.start_superlink(
            f"superlink-{attempt}", "coordinator", self.consortium, self.root / "coordinator" / f"home-{attempt}"
        )

    def start_superlink(self, name: str, party: str, consortium: Path, home: Path) -> None:
        """``fedlego superlink`` on ``party``'s host with ``consortium``'s keys, ready (node keys registered)."""
        args = ["superlink", "--host", "0.0.0.0", "--port", str(PORT), "--certs", str(consortium), "--home", str(home)]
        self.parties.start(name, party, args)
        wait_for(
            lambda: (
                "fedlego superlink: ready;" in self.parties.log(name) or self.parties.processes[name].poll() is not None
            ),
            120,
            "the SuperLink",
        )
        if self.parties.processes[name].poll() is not None:
            raise E2EError(f"the SuperLink exited: {self.parties.log(name)[-1500:]}")

    def network_checks(self) -> None:
        listener = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.hosts.namespace("coordinator"),
                sys.executable,
                "-c",
                f"import socket,time\ns=socket.socket(); s.bind(('0.0.0.0',{CLOSED_PORT})); s.listen(); time.sleep(60)",
            ],
        )
        try:
            time.sleep(1)
            record = self.record
            record.check(
                "a hospital reaches the SuperLink port by name",
                reachable(self.parties, "baseline", COORDINATOR_NAME, PORT),
            )
            record.check(
                f"the firewall keeps another coordinator port ({CLOSED_PORT}) from a hospital",
                not reachable(self.parties, "baseline", COORDINATOR_NAME, CLOSED_PORT),
            )
            record.check(
                "the coordinator's host itself reaches that port",
                reachable(self.parties, "coordinator", "127.0.0.1", CLOSED_PORT),
            )
        finally:
            listener.kill()
            listener.wait()

    def impostor(self) -> None:
        """A SuperLink with another CA's certificate for the coordinator's name: a hospital whose
        name resolution points there must not join it."""
        rogue = self.root / "impostor" / "consortium"
        _ok(
            self.parties.command("impostor", ["certs", "--out", str(rogue), "--server-name", COORDINATOR_NAME]),
            "impostor certs",
        )
        # the impostor even knows the hospital's node key: only the TLS check can stop the join
        (rogue / "coordinator" / "node-auth").mkdir(parents=True, exist_ok=True)
        shutil.copy(
            self.root / "baseline" / "keys" / "node-auth.pub", rogue / "coordinator" / "node-auth" / "baseline.pub"
        )
        self.start_superlink("impostor-superlink", "impostor", rogue, self.root / "impostor" / "home")
        self.record.check(
            "the impostor answers at the coordinator's name", reachable(self.parties, "victim", COORDINATOR_NAME, PORT)
        )
        self.parties.start("victim", "victim", self._site_args("baseline", "victim"))
        time.sleep(25)
        log = self.parties.log("victim")
        self.record.check("the hospital did not join the impostor", "SuperNode ID" not in log)
        failure = [line for line in log.splitlines() if "CERTIFICATE_VERIFY_FAILED" in line]
        self.record.check(
            "it refused the impostor's certificate (TLS)", bool(failure), failure[0][:160] if failure else ""
        )
        self.parties.stop("victim")
        self.parties.stop("impostor-superlink")

    def _site_args(self, site: str, home_name: str) -> list[str]:
        return [
            "site",
            "--superlink",
            f"{COORDINATOR_NAME}:{PORT}",
            "--data",
            str(self.root / site / "data"),
            "--keys",
            str(self.root / site / "keys"),
            "--home",
            str(self.root / "homes" / f"{home_name}-node"),
            "--threads",
            "1",
            "--audit-dir",
            str(self.root / site / "heads"),
        ]

    def sites(self) -> None:
        for site in HOSPITALS:
            self.parties.start(f"site-{site}", site, self._site_args(site, site))

    def run(self, out: Path, attempt: int, extra: list[str]) -> subprocess.Popen:
        args = [
            "run",
            "--superlink",
            f"127.0.0.1:{PORT}",
            "--certs",
            str(self.consortium),
            "--out",
            str(out),
            "--set",
            *SETTINGS,
            *extra,
            "--timeout",
            "900",
        ]
        return self.parties.start(f"run-{out.name}-{attempt}", "coordinator", args)

    def completed_run(self) -> None:
        out = self.root / "coordinator" / "runs" / "clean"
        process = self.run(out, 0, [])
        process.wait(timeout=900)
        results = json.loads((out / "results.json").read_text())
        self.record.check("the run completed", results.get("status") == "completed", str(results.get("error", "")))
        self.record.check("every hospital took part", sorted(results.get("sites", {})) == sorted(HOSPITALS))
        self.record.check(
            "packages required signatures, models signed",
            results.get("signatures") == {"required": True, "models_signed": True},
        )
        self.audit(out, results)

    def audit(self, out: Path, results: dict) -> None:
        copies = [copy_path(self.root / s / "heads", results["run_id"]) for s in HOSPITALS]
        present = [c for c in copies if c.exists()]
        args = [
            "audit",
            "verify",
            str(out / "audit.jsonl"),
            "--results",
            str(out / "results.json"),
            "--coordinator-key",
            str(self.root / HOSPITALS[0] / "keys" / "coordinator.pub"),
            *[a for c in present for a in ("--site-copy", str(c))],
        ]
        verified = self.parties.command("coordinator", args)
        self.record.check(
            f"`fedlego audit verify` with {len(present)} hospital copies",
            verified.returncode == 0,
            (verified.stdout + verified.stderr).strip().splitlines()[-1][:200],
        )

    def faults(self) -> None:
        out = self.root / "coordinator" / "runs" / "faults"
        run_log = out / ".flower" / "run.log"
        settings = ["allow-partial=true", f"min-sites={len(HOSPITALS) - 1}"]  # resumed without the lost host
        self.run(out, 0, settings)
        wait_for(
            lambda: "phase fuse:" in (run_log.read_text(errors="replace") if run_log.exists() else ""),
            600,
            "the fuse phase",
        )
        self.hosts.link_down("paired-1")
        wait_for(lambda: _fuse_rounds(out) >= 1, 300, "a fuse round on record")
        self.parties.kill("superlink-0")
        self.parties.kill("run-faults-0")
        before = _fuse_rounds(out)
        self.superlink(1)
        process = self.run(out, 1, settings)
        process.wait(timeout=900)
        results = json.loads((out / "results.json").read_text())
        record = self.record
        record.check(
            "the resubmitted run resumed and completed",
            results.get("status") == "completed" and (results.get("resumed") or 0) >= 1,
            f"status {results.get('status')}, resumed {results.get('resumed')}",
        )
        events = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
        uploads = [(e["site"], e["modality"]) for e in events if e["event"] == "package-received"]
        record.check("no block upload was redone", len(uploads) == len(set(uploads)), f"{len(uploads)} uploads")
        rounds = [e["round"] for e in events if e["event"] == "fuse-round"]
        record.check(
            "no finished fuse round was redone",
            len(rounds) == len(set(rounds)),
            f"{before} rounds before the kill, rounds {rounds}",
        )
        failed = {f["site"] for f in results.get("failures", [])}
        record.check("the vanished hospital is recorded as failed", "paired-1" in failed, f"failures: {sorted(failed)}")
        record.check(
            "its gap is on record", any("paired-1" in g for g in results.get("gaps") or []), str(results.get("gaps"))
        )
        self.audit(out, results)


def _fuse_rounds(out: Path) -> int:
    path = out / "audit.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"fuse-round"' in line)


def write_record(record: Record, out: Path, outcome: str, seconds: float) -> None:
    document = {
        "outcome": outcome,
        "seconds": seconds,
        "date": datetime.date.today().isoformat(),
        "steps": [{"step": s, "seconds": round(t, 1)} for s, t in record.steps],
        "checks": [c.__dict__ for c in record.checks],
    }
    (out / "deploy-e2e.json").write_text(json.dumps(document, indent=1) + "\n")
    lines = [
        "# Multi-host deployment end to end (network namespaces)",
        "",
        f"Command: `make deploy-e2e` (root; `python bench/netns_e2e.py --out docs/benchmarks`), run "
        f"{document['date']} on this machine's 2 cores: **{outcome}** in {seconds:.0f} s.",
        "",
        "A coordinator and four hospitals each on its own Linux network namespace (own address on",
        f"{SUBNET}.0/24, the coordinator reached as `{COORDINATOR_NAME}`, nftables on the coordinator",
        "letting the hospitals reach only the SuperLink port), real `fedlego certs request/sign`,",
        "`superlink`, `site`, `run` and `audit verify` commands, TLS and SuperNode authentication.",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {s['step']} | {s['seconds']:.0f} |" for s in document["steps"]],
        "",
        "| check | result | evidence |",
        "|---|---|---|",
        *[f"| {c.what} | {'ok' if c.ok else 'FAILED'} | {c.detail.replace('|', '/')} |" for c in record.checks],
        "",
    ]
    (out / "deploy-e2e.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the test")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("deploy-e2e: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            print(f"deploy-e2e: `{tool}` is missing (Debian: apt-get install iproute2 nftables)", file=sys.stderr)
            return 2
    tag = str(os.getpid() % 100000)
    root = Path(tempfile.mkdtemp(prefix="fedlego-netns-"))
    hosts = Hosts(tag)
    parties = Parties(hosts, root)
    scenario = Scenario(hosts, parties, root)
    start, outcome = time.monotonic(), "passed"
    try:
        scenario.step("hosts, names and firewall", lambda: hosts.open(list(ADDRESSES), {"victim": "impostor"}))
        scenario.step("keys made at each hospital, signed by the CA", scenario.keys)
        scenario.step("SuperLink on the coordinator's host", lambda: scenario.superlink(0))
        scenario.step("network checks", scenario.network_checks)
        scenario.step("a hospital refuses an impostor SuperLink", scenario.impostor)
        scenario.step("hospitals join", scenario.sites)
        scenario.step("a run to completion, audit verified", scenario.completed_run)
        scenario.step("a hospital vanishes and the coordinator is killed mid-fuse", scenario.faults)
    except (E2EError, subprocess.SubprocessError, OSError, json.JSONDecodeError) as error:
        outcome = f"FAILED: {error}"
        print(f"deploy-e2e: {outcome}", file=sys.stderr)
        for name in parties.processes:
            print(f"--- {name}\n{parties.log(name)[-1500:]}", file=sys.stderr)
    finally:
        parties.stop()
        hosts.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_record(scenario.record, args.out, outcome, time.monotonic() - start)
    print(f"deploy-e2e: {outcome}; record in {args.out / 'deploy-e2e.md'}")
    return 0 if outcome == "passed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
