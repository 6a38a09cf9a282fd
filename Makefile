# fedlego: `make demo` sets up and runs the main job, `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup demo test lint docs browser docker-lint docker-e2e deploy-e2e gpu-check bench bench-quick bench-privacy proto clean app-config

# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# The example plugins (plugins/: an encoder, a modality kind) are installed too: tests run federations with them.
$(VENV)/.installed: pyproject.toml bench/pyproject.toml plugins/fedlego-tabular-transformer/pyproject.toml plugins/fedlego-code-sequences/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -e plugins/fedlego-tabular-transformer
	$(PY) -m pip install --quiet --no-deps -e plugins/fedlego-code-sequences
	$(PY) -m pip install --quiet --no-deps -e bench
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/fedlego simulate --dataset pbc --out runs/demo-pbc

lint: setup
	$(PY) -m ruff check .

# The documentation site (MkDocs, Material theme) into build/site; --strict: a broken link fails.
docs: setup
	$(VENV)/bin/mkdocs build --strict --quiet

# Two pytest-xdist workers, one file each at a time: the deployment tests (mostly waiting on
# Flower's polls) run beside the others. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: lint docs browser
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# Headless Chromium for the report test (Debian's package; as root only, else the test is skipped
# outside CI): tests/test_report.py renders report.html in it as a person would see it.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
		|| echo "note: chromium not installed; the report's browser test will be skipped outside CI"

# The benchmark suite (about 25 min on 2 cores): tables, ablations, cost; figures into docs/benchmarks/.
bench: setup
	$(VENV)/bin/fedlego-bench suite --out docs/benchmarks

bench-quick: setup
	$(VENV)/bin/fedlego-bench suite --quick --out runs/bench-quick

bench-privacy: setup
	$(VENV)/bin/fedlego-bench privacy --out docs/benchmarks

# The CUDA path once (block training, block FedAvg and fuse rounds on one GPU, then on CPU for the
# times): needs a CUDA build of torch and a GPU; never part of `make test`.
gpu-check: setup
	bash bench/gpu_check.sh

docker-lint: setup
	$(VENV)/bin/hadolint docker/Dockerfile

# Build the CPU images and run a coordinator and three hospitals in containers, end to end (about
# 10 min cold). Needs a running Docker engine and compose, not the venv; never part of `make test`.
docker-e2e:
	bash docker/e2e.sh

# A coordinator and four hospitals on separate hosts (network namespaces; root): TLS, keys made at
# each hospital, firewall, an impostor SuperLink, a vanished hospital, a killed coordinator resumed.
deploy-e2e: setup
	$(PY) bench/netns_e2e.py --out docs/benchmarks

clean:
	rm -rf $(VENV) runs

# Regenerate the Flower app's [tool.flwr.app.config] from common/config.py (tests/test_config.py checks it).
app-config: setup
	$(PY) -c "from pathlib import Path; from fedlego.common.config import write_app_config; write_app_config(Path('fedlego/flwr_app/pyproject.toml'))"

proto: setup
	$(PY) -m grpc_tools.protoc -I proto --python_out=proto --pyi_out=proto proto/fedlego.proto
