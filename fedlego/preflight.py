"""Preflight: ``fedlego site --check`` and ``fedlego run --check`` test what a run needs, one finding
per check, and exit without joining or starting a run.

A hospital's check: its data folder against the consortium schema, its key folder (files, expiry),
the SuperLink's address (name, TCP, TLS with the consortium CA, health), its node key (a SuperNode
started for a moment that must be activated, with no ClientApp able to run), and the software it
runs (the coordinator compares versions when a run starts). The coordinator's check: its
consortium folder, the run settings, the SuperLink, and how many registered sites are online.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlego.launcher import (
    CONNECTION,
    flwr_json,
    health_url,
    quiet_environment,
    stop_process_group,
    write_connection,
)

ACTIVATION_SECONDS = 40.0
"""How long a hospital's check waits for its SuperNode to be activated."""


@dataclass
class Finding:
    """One check: what, whether it held, and what was seen."""

    what: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"  {'ok  ' if self.ok else 'FAIL'} {self.what}" + (f": {self.detail}" if self.detail else "")


def _attempt(what: str, check) -> Finding:
    """Run one check; any exception is that check's failure, with its message."""
    try:
        detail = check()
    except Exception as error:  # a preflight reports every failure; none escapes
        return Finding(what, False, f"{type(error).__name__}: {error}")
    return Finding(what, True, detail or "")


def superlink_reachable(address: str, ca: Path | None) -> list[Finding]:
    """The SuperLink's name resolves, its port accepts TCP, its certificate verifies with the
    consortium CA for that name, and its health endpoint answers."""
    host, _, port = address.rpartition(":")
    findings = [
        _attempt(f"{host} resolves", lambda: ", ".join(sorted({a[4][0] for a in socket.getaddrinfo(host, None)})))
    ]
    if not findings[-1].ok:
        return findings

    def tcp() -> str:
        with socket.create_connection((host, int(port)), timeout=10):
            return f"port {port} open"

    findings.append(_attempt(f"TCP to {address}", tcp))
    if not findings[-1].ok:
        return findings
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None

    def health() -> str:
        with urllib.request.urlopen(health_url(address, tls=ca is not None), timeout=10, context=context) as answer:
            return f"HTTP {answer.status}" + (", certificate verified with the consortium CA" if ca else ", INSECURE")

    findings.append(_attempt("SuperLink answers (TLS and health)" if ca else "SuperLink answers (health)", health))
    return findings


def node_activation(command: list[str], home: Path, timeout: float = ACTIVATION_SECONDS) -> Finding:
    """Start the site's SuperNode for a moment (``--isolation process`` and no ClientApp: no
    message can run here) and wait for the SuperLink to activate it (its node key registered)."""
    command = list(command)
    command[command.index("--isolation") + 1] = "process"
    log = home / "preflight-supernode.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, env=quiet_environment(home), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            text = log.read_text(errors="replace")
            if "SuperNode ID" in text:
                return Finding("node key accepted by the SuperLink", True, "SuperNode activated, then stopped")
            if "Failed to activate SuperNode" in text:
                break
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        reason = next(
            (line.strip() for line in text.splitlines() if "Failed" in line or "ERROR" in line or "SSL" in line),
            f"not activated within {timeout:.0f} s",
        )
        return Finding(
            "node key accepted by the SuperLink",
            False,
            f"{reason[:200]} (is this site's node-auth.pub registered at the SuperLink?)",
        )
    finally:
        stop_process_group(process)


def site_preflight(
    superlink: str, data_dir: Path, site_certs: Path | None, schema: Path | None, command: list[str]
) -> list[Finding]:
    """Every check of a hospital's preflight (``command``: the SuperNode it would start)."""
    from fedlego.common.versions import software_versions
    from fedlego.deploy import check_site_certs, validate_site_folder

    findings = [
        _attempt(
            f"data folder {data_dir}" + (f" against the schema {schema}" if schema else ""),
            lambda: _site_summary(validate_site_folder(data_dir, schema)),
        )
    ]
    if site_certs is not None:
        findings.append(_attempt(f"key folder {site_certs} (files, expiry)", lambda: str(check_site_certs(site_certs))))
    findings += superlink_reachable(superlink, None if site_certs is None else Path(site_certs) / "ca.pem")
    if all(f.ok for f in findings):
        with tempfile.TemporaryDirectory(prefix="fedlego-preflight-") as home:
            findings.append(node_activation(command, Path(home)))
    versions = software_versions()
    findings.append(
        Finding(
            "software",
            True,
            ", ".join(f"{name} {version}" for name, version in versions.items())
            + " (the coordinator refuses another version when the run starts)",
        )
    )
    return findings


def _site_summary(data: Any) -> str:
    counts = {role: len(ids) for role, ids in data.roles.items()}
    return f"site {data.name}: {', '.join(sorted(data.dataset.modalities))}; patients per role {counts}"


def coordinator_preflight(superlink: str, certs: Path | None, overrides: Mapping[str, Any]) -> list[Finding]:
    """Every check of the coordinator's preflight: settings, consortium folder, SuperLink, sites online."""
    from fedlego.common.config import RunConfig
    from fedlego.common.signing import COORDINATOR, load_signing_key, load_trusted_sites
    from fedlego.deploy import check_expiry

    findings = [_attempt("run settings", lambda: f"run id {RunConfig.from_flat(dict(overrides)).run_id()}")]
    registered: list[str] = []
    if certs is not None:
        findings.append(_attempt(f"consortium folder {certs} (expiry)", lambda: str(check_expiry(certs))))
        trusted = overrides.get("trusted-sites") or certs / "coordinator" / "trusted-sites.json"
        key = overrides.get("coordinator-key") or certs / "coordinator" / "signing.key"

        def sites() -> str:
            registered.extend(sorted(n for n in load_trusted_sites(Path(trusted)) if n != COORDINATOR))
            return f"{len(registered)} registered: {', '.join(registered)}"

        findings.append(_attempt(f"trusted sites {trusted}", sites))
        findings.append(_attempt(f"coordinator signing key {key}", lambda: load_signing_key(Path(key)) and "readable"))
    findings += superlink_reachable(superlink, None if certs is None else certs / "superlink" / "ca.pem")
    if all(f.ok for f in findings) and certs is not None:
        findings.append(_online(superlink, certs, registered))
    return findings


def _online(superlink: str, certs: Path, registered: list[str]) -> Finding:
    """How many SuperNodes the SuperLink has registered and how many are online now."""
    with tempfile.TemporaryDirectory(prefix="fedlego-preflight-") as home:
        write_connection(Path(home), superlink, certs / "superlink" / "ca.pem")
        answer = flwr_json(["supernode", "list", CONNECTION], Path(home))
    if not answer.get("success"):
        return Finding("sites online", False, str(answer.get("error-message", answer))[:200])
    nodes = list(answer.get("nodes", []))
    online = sum(1 for node in nodes if node.get("status") == "online")
    expected = len(registered) or len(nodes)
    return Finding(
        "sites online",
        online >= expected,
        f"{online} of {expected} registered sites online"
        + ("" if online >= expected else " (a run with min-sites = 0 waits for all of them)"),
    )
