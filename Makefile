# rayhistory: one entry point for setting up, testing, benchmarking and the local demo.
# Everything is installed from the package registries (PyPI, npm, Debian) into this folder,
# except Debian's chromium (system-wide, for the browser tests).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TOOLS  := .tools
STAMP  := $(VENV)/.installed-stamp
AZURITE := $(TOOLS)/node_modules/.bin/azurite-blob
CHROMIUM ?= /usr/bin/chromium
# `ip` for the Ingress tests' network namespaces (tests/ingress/netns.py)
IPROUTE2 ?= /usr/sbin/ip
PYTEST_ARGS ?=

.PHONY: k8s-tools test-k8s setup prepare test test-fast test-slow bench bench-server bench-collector clean dashboard demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python -e ".[test]"
	touch $@

$(AZURITE):
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error azurite@3

# A Debian package, installed when run as root (CI runs as root), else the command to run.
apt_install = @if [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1)) >/dev/null; \
	else \
	  echo "$(1) missing: run 'sudo apt-get install $(1)' for $(2)"; \
	fi

$(CHROMIUM):
	$(call apt_install,chromium,the browser tests)

$(IPROUTE2): | $(CHROMIUM)
	$(call apt_install,iproute2,the Ingress tests)

## The real Kubernetes control plane for `pytest -m k8s`: kube-apiserver, kube-controller-manager, kubectl,
## the KubeRay operator and Traefik (the Ingress tests' controller), built from Go modules into
## .tools/k8s-<version>/, .tools/kuberay-<version>/ and .tools/traefik-<version>/ when missing
## (tests/k8s/build.sh; the first build takes long, see README).
k8s-tools:
	bash tests/k8s/build.sh

setup: $(STAMP) $(AZURITE) $(CHROMIUM) $(IPROUTE2) k8s-tools

## setup and the image together: on a cold machine the Go builds (CPU) run while the downloads, apt and the
## image build (mostly waiting on the network) go on beside them. apt runs one at a time (order-only rules).
prepare:
	@$(MAKE) --no-print-directory -j3 setup image

## The whole suite, slow end-to-end tests included (what CI runs).
test: prepare
	$(BIN)/pytest $(PYTEST_ARGS)

## Everything but the slow end-to-end tests.
test-fast: setup
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

## Only the slow end-to-end tests (real Ray cluster, browser).
test-slow: setup
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

## Only the tests against the real Kubernetes control plane and KubeRay.
test-k8s: setup
	$(BIN)/pytest -m k8s $(PYTEST_ARGS)

## Benchmarks: print figures and write them to bench-results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_events
	$(BIN)/python -m benchmarks.bench_operator

## History server: session loads, resident bytes, HTTP p50/p99, /clusters (bench-results/server.json);
## snapshot build/load, bytes per task, API p50/p99 for 10k and 100k tasks, 1M with RAYHISTORY_BENCH_1M=1
## (bench-results/snapshot.json); a session larger than a 2 GiB replica, its tasks on local disk: 2M tasks, 10M
## with RAYHISTORY_BENCH_10M=1 (bench-results/disk_tasks.json).
## Collector ingest: events/s with the spool durable, CPU per 10k events, peak RSS (bench-results/collector.json).
bench-collector: $(STAMP)
	$(BIN)/python -m benchmarks.bench_collector

bench-server: $(STAMP)
	$(BIN)/python -m benchmarks.bench_server
	$(BIN)/python -m benchmarks.bench_snapshot
	$(BIN)/python -m benchmarks.bench_disk_tasks

## The Ray Dashboard frontend build, from the ray wheel without installing Ray (docs/user-guide.md).
dashboard: $(TOOLS)/dashboard/index.html

$(TOOLS)/dashboard/index.html:
	$(PYTHON) scripts/fetch_dashboard.py --dest $(TOOLS)/dashboard --wheels $(TOOLS)/wheels

## The local demo: record a real Ray session, stop it, serve its dashboard from .demo/ (README).
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## The container image (deploy/Dockerfile) with podman, from a locally made base (no registry needed):
## localhost/rayhistory:<version>. image-tools: podman, buildah, runc, debootstrap from Debian (as root).
IMAGE_PY = $$(test -x $(BIN)/python && echo $(BIN)/python || echo $(PYTHON))
.PHONY: image image-smoke image-tools bench-image
image-tools: | $(CHROMIUM) $(IPROUTE2)
	@$(PYTHON) scripts/image.py tools

image: image-tools
	$(IMAGE_PY) scripts/image.py build

image-smoke: image
	@$(IMAGE_PY) scripts/image.py smoke

## Image build times (cold, empty store, fresh clone, warm), size, start time (bench-results/image.json).
bench-image: image-tools
	$(IMAGE_PY) scripts/image.py bench

# the image tests (tests/image, marked slow) run the image that `make test` (prepare) builds first
setup: image-tools
test-slow: image

clean:
	rm -rf $(VENV) $(TOOLS) test-output .pytest_cache
