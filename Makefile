# Every target installs what it needs itself: a fresh clone needs only Python 3.11, Java 17 and Node 20+ (checked below).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := build/data
FOOLBOX_WHEEL := $(DATA)/foolbox-3.3.4-py3-none-any.whl
# Debian's Chromium: the report tests render OUTPUT/report.html in it (Playwright drives it and never downloads a browser).
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM
# jsii prints a banner on every synth under Node 20; the version is checked in `prereqs` instead.
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help prereqs venv data demo test bench gpu-check arch-check cost synth deploy destroy lock clean

help:
	@echo "make demo     run the inference job on local Spark (trains a small model on real images first)"
	@echo "make test     run the whole offline test suite"
	@echo "make bench    run the throughput benchmark (about an hour; not part of make test)"
	@echo "make gpu-check   prove the GPU wheels' shared libraries all resolve (downloads 3.9 GB into build/gpu-check/)"
	@echo "make arch-check  check every CPU pin has an aarch64 (Graviton) wheel on PyPI; rewrites requirements-aarch64.txt"
	@echo "make cost     dollars per million images and minutes to results, from benchmarks/results.json and infra/prices.json"
	@echo "make synth | deploy | destroy   the AWS stack (deploy/destroy need AWS credentials)"

prereqs:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (or run make PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: $(PYTHON) is $$($(PYTHON) --version 2>&1); Python 3.11 is required (MXNet 1.9.1 wheels and the EMR 7 PySpark runtime)"; exit 1; }
	@command -v java >/dev/null || { echo "error: java not found: install a Java 17 runtime (Spark 3.5 runs on it)"; exit 1; }
	@java -version 2>&1 | grep -q 'version "17' || { echo "error: Java 17 is required by Spark 3.5; found: $$(java -version 2>&1 | head -1)"; exit 1; }
	@command -v node >/dev/null || { echo "error: node not found: install Node.js 20 or newer (the CDK runs on it)"; exit 1; }

$(STAMP): requirements.lock | prereqs
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

venv: prereqs $(STAMP)

$(FOOLBOX_WHEEL): requirements-data.txt | $(STAMP)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements-data.txt -d $(DATA)

data: $(FOOLBOX_WHEEL)

demo: venv
	$(PY) -m job.demo --work-dir build/demo

test: venv data $(CHROMIUM)
	$(PY) -m pytest

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "error: $(CHROMIUM) not found and no apt-get: install Chromium, or run make CHROMIUM=/path/to/chromium"; exit 1; }
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

bench: venv data
	$(PY) -m tests.benchmark.run --foolbox-wheel $(FOOLBOX_WHEEL) --results benchmarks/results.json

# Downloads the GPU wheelhouse for EMR nodes (cached under build/gpu-check/) and follows every DT_NEEDED entry of
# libmxnet.so and ONNX Runtime's CUDA provider; exits 1 listing any library that would not resolve on a GPU node.
# Rewrites tests/bootstrap/fixtures/closure-x86_64-gpu.json: the system libraries the bootstrap must ensure for them.
gpu-check: venv
	$(PY) tests/bootstrap/check_gpu_libraries.py --cache build/gpu-check

# Downloads the CPU wheelhouse for Graviton (aarch64) EMR nodes from PyPI (~190 MB, cached under build/arch-check/),
# checks one aarch64 or pure-Python wheel per pin and records them with their hashes in requirements-aarch64.txt, which
# make test checks against the pins. Then, for aarch64 and x86_64 (~60 MB more: x86_64's mxnet and onnxruntime), it
# follows the DT_NEEDED closure of libmxnet.so and ONNX Runtime's .so files with gpu-check's resolver and rewrites
# tests/bootstrap/fixtures/closure-<machine>-cpu.json; exits 1 if the bootstrap's list for a machine lacks a library
# the closure needs. make test checks the bootstrap against these records. Run it after changing a pin.
arch-check: venv
	$(PY) tests/bootstrap/check_aarch64_wheels.py --cache build/arch-check

# Prints the cost model's table (infra/cost.py): no AWS call, no network.
cost: venv
	$(PY) -m infra.cost --results benchmarks/results.json --prices infra/prices.json

CDK := node_modules/.bin/cdk
# Offline-friendly CLI: no version check or notices over the network; the stack is env-agnostic, so synth needs no
# AWS credentials (deploy and destroy use the usual AWS credential chain and region).
CDK_FLAGS := --no-version-reporting --no-notices

# The CDK CLI, exactly as pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json | prereqs
	npm ci --no-audit --no-fund
	touch $@

# Writes cdk.out/ (CloudFormation template + assets); fails on any unacknowledged cdk-nag finding.
synth: venv node_modules/.installed
	$(CDK) synth $(CDK_FLAGS) --quiet

# Creates or updates the stack (about 10 min; a persistent cluster adds its boot time). Asks before widening IAM.
deploy: venv node_modules/.installed
	$(CDK) deploy $(CDK_FLAGS) --require-approval broadening

# Deletes everything, buckets included (unless retain_data_on_destroy); terminates the stack's EMR clusters first.
destroy: venv node_modules/.installed
	$(CDK) destroy $(CDK_FLAGS) --force

# Re-resolve requirements.in into requirements.lock in a throw-away environment.
lock: prereqs
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet --disable-pip-version-check -r requirements.in
	{ echo '# Generated by `make lock` from requirements.in: every package installed by `make venv`, pinned. Do not edit by hand.'; \
	  build/lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock

clean:
	rm -rf $(VENV) build cdk.out node_modules
