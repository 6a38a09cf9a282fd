#!/usr/bin/env bash
# `make docker-e2e`: build the CPU images, run a coordinator and three hospitals with compose on
# the host's loopback (TLS and SuperNode authentication on), run one federation through the
# coordinator's image, check it, then remove every container, volume and folder it made.
#
# Needs a running Docker engine and compose (`docker compose` or docker-compose 1.29); everything
# else, `fedlego certs` included, runs inside the images. Settings (environment):
#   BASE_IMAGE       base image (PYTHON_IMAGE build arg); default local/debian-python:bookworm,
#                    made by docker/base-image.sh when missing
#   TORCH_WHEEL_DIR  a folder holding the CPU torch 2.13.0 wheel; default: `pip download` on this host
#   PIP_CA_BUNDLE    a CA bundle pip trusts during the build (default: the system bundle; empty: none)
#   FEDLEGO_LINK_PORT, FEDLEGO_{CLINICAL,RNA,PAIRED_0}_PORT  loopback ports (compose.loopback.yaml)
# Exits non-zero as soon as a step fails; the EXIT trap cleans up either way.
set -euo pipefail

cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-local/debian-python:bookworm}
PIP_CA_BUNDLE=${PIP_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
TORCH_VERSION=2.13.0
SITES=(clinical rna paired-0)
RUN_DIR=/var/lib/fedlego/runs/demo # the submit service's --out (compose.loopback.yaml)
export COMPOSE_PROJECT_NAME=fedlego-e2e-$$
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

step() { printf '\n== %s (%ds)\n' "$*" "$SECONDS"; }
fail() {
    echo "docker-e2e: FAILED: $*" >&2
    exit 1
}
timed() { # timed NAME COMMAND...: run it and record its wall time in the summary
    local name=$1 start=$SECONDS
    shift
    "$@"
    summary+=("$(printf '%-28s %4d s' "$name" $((SECONDS - start)))")
}
summary=()

docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker/README.md: starting the engine)"
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
"${compose[@]}" version >/dev/null 2>&1 || fail "neither \`docker compose\` nor docker-compose is installed"
ports=("${FEDLEGO_LINK_PORT:-19092}" "${FEDLEGO_CLINICAL_PORT:-19101}" "${FEDLEGO_RNA_PORT:-19102}" "${FEDLEGO_PAIRED_0_PORT:-19103}")
for port in "${ports[@]}"; do
    ! ss -Hltn "sport = :$port" | grep -q . || fail "port $port on 127.0.0.1 is in use (set FEDLEGO_*_PORT)"
done

work=$(mktemp -d /tmp/fedlego-e2e.XXXXXX)
export FEDLEGO_DEPLOY=$work/deploy
# Inside the build context, removed again. A fixed name, so that a second run builds from the cache.
inputs=docker/build-inputs/e2e
networks_before=$(docker network ls -q | sort)
files=(-f docker/compose.yaml -f docker/compose.loopback.yaml)

cleanup() {
    local rc=$?
    set +e
    trap - EXIT
    if ((rc != 0)) && [[ -d $FEDLEGO_DEPLOY ]]; then
        "${compose[@]}" "${files[@]}" ps
        "${compose[@]}" "${files[@]}" logs --no-color --tail 40
    fi
    step "clean up: the compose project $COMPOSE_PROJECT_NAME, $work, $inputs"
    [[ -d $FEDLEGO_DEPLOY ]] && "${compose[@]}" "${files[@]}" down --volumes --remove-orphans --timeout 30
    # The deployment folder belongs to uid 10001 (the images' user): remove it from inside.
    [[ -d $FEDLEGO_DEPLOY ]] && as_root find /deploy -mindepth 1 -delete
    rm -rf "$work" "$inputs"
    if ((rc == 0)); then echo "docker-e2e: PASSED"; else echo "docker-e2e: FAILED (exit $rc)" >&2; fi
    exit "$rc"
}
trap cleanup EXIT

# A root shell in the coordinator image, with the deployment folder at /deploy (chown and clean-up).
as_root() { docker run --rm --pull=never --network none --user 0 --entrypoint "$1" -v "$FEDLEGO_DEPLOY:/deploy" fedlego-coordinator:cpu "${@:2}"; }
# A fedlego command in the coordinator image as its user 10001, with no network.
fedlego() { docker run --rm --pull=never --network none -v "$FEDLEGO_DEPLOY:/deploy" fedlego-coordinator:cpu "$@"; }

step "base image $BASE_IMAGE"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    [[ $BASE_IMAGE == local/debian-python:bookworm ]] || fail "no image $BASE_IMAGE (docker pull or docker load it first)"
    timed "base image (debootstrap)" docker/base-image.sh "$BASE_IMAGE"
fi

step "build inputs in $inputs"
mkdir -p "$inputs/wheels"
if [[ -n ${TORCH_WHEEL_DIR:-} ]]; then
    cp "$TORCH_WHEEL_DIR"/torch-"$TORCH_VERSION"*.whl "$inputs/wheels/"
else
    python3 -m pip download --quiet --no-deps "torch==$TORCH_VERSION" -d "$inputs/wheels"
fi
# The CPU image must not carry PyPI's CUDA build: only a +cpu wheel will do.
compgen -G "$inputs/wheels/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null ||
    fail "no CPU torch wheel ($(ls "$inputs/wheels")); set TORCH_WHEEL_DIR to a folder holding torch-$TORCH_VERSION+cpu"
build_args=(--build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "TORCH_WHEELS=${inputs#docker/build-inputs/}/wheels")
if [[ -n $PIP_CA_BUNDLE ]]; then
    cp "$PIP_CA_BUNDLE" "$inputs/ca-bundle.crt"
    build_args+=(--build-arg "CA_BUNDLE=${inputs#docker/build-inputs/}/ca-bundle.crt")
fi

for target in coordinator site; do
    step "build the $target image"
    timed "build $target" docker build --quiet --network host -f docker/Dockerfile --target "$target" \
        "${build_args[@]}" -t "fedlego-$target:cpu" .
done

step "consortium keys and site folders (fedlego certs, fedlego export-sites)"
mkdir "$FEDLEGO_DEPLOY"
as_root chown 10001:10001 /deploy
site_flags=()
for site in "${SITES[@]}"; do site_flags+=(--site "$site"); done
fedlego certs --out /deploy/consortium "${site_flags[@]}" \
    --server-name coordinator --server-name 127.0.0.1 --server-name localhost >/dev/null
fedlego export-sites --dataset tcga-acc --modalities clinical rna --out /deploy/sites
for site in "${SITES[@]}"; do [[ -f $FEDLEGO_DEPLOY/sites/$site/site.json ]] || fail "export-sites wrote no $site"; done

step "compose up: coordinator (until healthy), then the three hospitals"
timed "compose up" "${compose[@]}" "${files[@]}" up -d --no-build
container() { "${compose[@]}" "${files[@]}" ps -q "$1"; }
[[ $(docker inspect -f '{{.State.Health.Status}}' "$(container coordinator)") == healthy ]] || fail "coordinator not healthy"

step "federation: compose run submit (fedlego run in the coordinator image)"
timed "federation (fedlego run)" "${compose[@]}" "${files[@]}" run --rm -T submit > >(tee "$work/run.log")

step "checks"
in_coordinator() { docker exec -i "$(container coordinator)" "$@"; }
in_coordinator python - "$RUN_DIR/results.json" "${SITES[@]}" <<'EOF'
import json, sys

results = json.load(open(sys.argv[1]))
problems = []
if results.get("status") != "completed":
    problems.append(f"status {results.get('status')!r}: {results.get('error')}")
if sorted(results.get("sites", {})) != sorted(sys.argv[2:]):
    problems.append(f"sites {sorted(results.get('sites', {}))}")
if results.get("signatures") != {"required": True, "models_signed": True}:
    problems.append(f"signatures {results.get('signatures')}")
if results.get("refused") or results.get("failures"):
    problems.append(f"refused {results.get('refused')}, failures {results.get('failures')}")
metrics = results.get("metrics", {})
if not (metrics.get("merge") and metrics.get("fuse")):
    problems.append(f"no merge or fuse metrics: {sorted(metrics)}")
if problems:
    sys.exit("results.json: " + "; ".join(problems))
print(f"results.json: completed, sites {', '.join(sorted(results['sites']))}, packages signed, "
      f"metrics {', '.join(sorted(metrics))}, {results.get('wall_seconds', 0):.0f} s")
EOF
in_coordinator fedlego audit verify "$RUN_DIR/audit.jsonl" --results "$RUN_DIR/results.json"

for service in coordinator "${SITES[@]/#/site-}"; do
    id=$(container "$service")
    [[ $(docker inspect -f '{{.State.Status}} {{.RestartCount}}' "$id") == "running 0" ]] ||
        fail "$service: not running, or restarted"
    # Every process of the container (the init, fedlego, the Flower process) as uid 10001.
    uids=$(docker top "$id" -eo pid,uid | awk 'NR > 1 {print $2}' | sort -u | tr '\n' ' ')
    [[ $uids == "10001 " ]] || fail "$service: processes run as uid(s) $uids, not only 10001"
    # Every bind mount (keys, site data) read-only; only the coordinator's runs volume is writable.
    writable=$(docker inspect -f '{{range .Mounts}}{{if and .RW (ne .Type "volume")}}{{.Destination}} {{end}}{{end}}' "$id")
    [[ -z $writable ]] || fail "$service: writable bind mounts: $writable"
    for path in $(docker inspect -f '{{range .Mounts}}{{if ne .Type "volume"}}{{.Destination}} {{end}}{{end}}' "$id"); do
        ! docker exec "$id" touch "$path/.e2e-write-test" 2>/dev/null || fail "$service: could write into $path"
    done
    echo "  $service: running, uid 10001 only, read-only mounts: $(docker inspect -f '{{range .Mounts}}{{if ne .Type "volume"}}{{.Destination}} {{end}}{{end}}' "$id")"
done
[[ $(docker image inspect -f '{{.Config.User}}' fedlego-coordinator:cpu) == 10001:10001 ]] ||
    fail "the submit service's image does not run as 10001"
[[ $(docker network ls -q | sort) == "$networks_before" ]] || fail "compose created a network"
echo "  no Docker network created (host network only)"

step "summary"
printf '  %s\n' "${summary[@]}"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(fedlego-|local/debian-python)' | sed 's/^/  /'
