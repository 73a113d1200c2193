# xfer — make demo: pull from a local registry; make test: everything CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := docker-registry skopeo umoci docker.io podman containerd curl
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck system venv bench bench-quick bench-fleet clean

# Debian packages the tests drive for real: the registry, two independent readers of our store,
# and the engines that load what xfer saves and save what it loads (tests/test_interop_daemons.py
# starts them on private roots and sockets; nothing here enables or starts their services), and
# curl, the bench's yardstick for the delay proxy and the shaped link.
system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Byte-code compiled up front: where PYTHONDONTWRITEBYTECODE is set, every run of an editable
# install would otherwise compile the package again (about 40 ms of each command's start).
venv: $(STAMP)
	@$(PY) -m compileall -q transfer

demo: system venv
	$(PY) -m fixtures.demo

lint: venv
	$(VENV)/bin/ruff check transfer tests fixtures
	$(VENV)/bin/ruff format --check transfer tests fixtures
	$(VENV)/bin/mypy

test: system venv lint
	$(VENV)/bin/pytest -q

# Benchmarks (never part of `make test`): results in bench-results/results.{md,json}.
# BENCH_ARGS passes options; by default --profile: one more xfer run of each scenario under
# py-spy, summarised in the results. E.g. BENCH_ARGS="--only pull-big,resume --runs 5".
BENCH_ARGS ?= --profile
bench: system venv
	$(PY) -m pip install -q 'python-dxf>=12' 'py-spy>=0.3'
	$(PY) -m fixtures.bench $(BENCH_ARGS)

bench-quick: system venv
	$(PY) -m pip install -q 'python-dxf>=12' 'py-spy>=0.3'
	XFER_BENCH_SCALE=0.05 $(PY) -m fixtures.bench $(BENCH_ARGS)

# Only the scenarios of issue 12 (TLS and token auth, registry → registry copies, mirrors).
BENCH_FLEET = tls-many,tls-token-many,company-many,copy-big,copy-rootfs,mirror-set,mirror-30,company-mirror-10
bench-fleet: system venv
	$(PY) -m pip install -q 'python-dxf>=12' 'py-spy>=0.3'
	$(PY) -m fixtures.bench --only $(BENCH_FLEET) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .demo
