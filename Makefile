# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tratree-installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup cluster node kueue images test-images demo test lint bench crds clean docs

setup: $(STAMP) $(CHROMIUM)

# torch first and pinned: PyPI serves 2.13.0 as its CUDA build (several GB with the nvidia-* wheels;
# it runs on the CPU too). Measured on this 2-core machine: about 4 minutes for the whole setup.
# Then everything else at the versions known to work.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e ".[all,dev]"
	$(BIN)/python -m pip check
	touch $@

# Debian's Chromium, which the browser test drives with Playwright (a test tool's own browser download
# cannot reach its servers from here). Installed as root, or through sudo where that is how.
$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo -E) apt-get install -y -q --no-install-recommends chromium

# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd for the tests, built from
# the Go module proxy at the release pinned in cluster/go.mod and cached under ~/.cache/tratree
# (cold: about 12 minutes on 2 cores; warm: instant)
cluster:
	bash cluster/build.sh

# Kueue's controller manager, its CRDs and webhook configurations, for the tests that run the operator
# under Kueue: built by cluster/kueue.sh at the release pinned in cluster/kueue/go.mod, cached under
# ~/.cache/tratree (cold: about 4 minutes on 2 cores)
kueue:
	bash cluster/kueue.sh

# A real node's parts: runc, the CNI plugins, iptables and conntrack (for kube-proxy), buildah and podman
# (images), debootstrap (their base) from Debian; containerd, Helm and the pause image built by
# cluster/node.sh from the Go module proxy and cached under ~/.cache/tratree (cold: a few minutes).
NODE_TOOLS := /usr/sbin/runc /usr/lib/cni/bridge /usr/sbin/iptables /usr/sbin/conntrack /usr/bin/buildah \
              /usr/bin/podman /usr/sbin/debootstrap
node: $(NODE_TOOLS)
	bash cluster/node.sh

$(NODE_TOOLS) &:
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo -E) apt-get install -y -q --no-install-recommends \
	  runc containernetworking-plugins iptables conntrack buildah podman debootstrap

# All four images, from a Debian base made here (images/build.sh: a table of build times and sizes)
images: $(NODE_TOOLS)
	bash images/build.sh

# The images the real-node test runs (the explorer's vLLM is left to `make images`: see docs/development)
test-images: $(NODE_TOOLS)
	bash images/build.sh operator cpu trainer

demo: setup
	$(BIN)/tratree run examples/quickstart.yaml

test: setup cluster node kueue test-images docs
	$(BIN)/python -m pytest

# the docs site, strict: a broken link, a missing page or a reference that no longer builds fails
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check .

bench: setup cluster
	$(BIN)/python bench/tree_mcts.py
	$(BIN)/python bench/explore.py
	$(BIN)/python bench/shards.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/operator.py
	$(BIN)/python bench/operator_kubernetes.py

# the CRD, generated from tratree/spec/experiment.py, and the chart's copy of it
crds: setup
	$(BIN)/python -m tratree.spec.crd > crds/w2sgexperiments.tratree.io.yaml
	cp crds/w2sgexperiments.tratree.io.yaml charts/tratree/crds/

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis artifacts site
