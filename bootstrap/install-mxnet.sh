#!/usr/bin/env bash
# EMR bootstrap action: installs the inference job's Python runtime (MXNet 1.9.1 and its pinned companions) into the
# Python that PySpark uses on EMR 7.x (Amazon Linux 2023, python3.11), then proves it works with one forward pass.
#
# Usage:
#   install-mxnet.sh cpu|gpu [WHEELHOUSE]                    # on an EMR node (the bootstrap action)
#   install-mxnet.sh --build-wheelhouse cpu|gpu DIRECTORY     # anywhere with pip and PyPI: fills a wheelhouse
#   install-mxnet.sh --print-requirements cpu|gpu             # the pinned list, one per line
#
#   cpu|gpu     which MXNet and ONNX Runtime builds to install (see GPU_REQUIREMENTS for the CUDA choice). With
#               gpu, a node without an NVIDIA device (a CPU primary) gets the cpu build and the log says so.
#   WHEELHOUSE  optional: s3://bucket/prefix/ or a local directory holding a wheel for every pinned requirement
#               (what --build-wheelhouse downloads, for EMR nodes' platform, whatever machine it runs on). With it pip
#               runs with --no-index --find-links, so nodes in private subnets (S3 gateway endpoint, no NAT) need no
#               internet. Without it pip downloads from PyPI.
#
# Environment:
#   MXNET_BOOTSTRAP_PYTHON  interpreter to install into (default: python3.11, which the stack sets as PYSPARK_PYTHON);
#                           for --build-wheelhouse, any Python with pip.
#   MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS  wait before the first retry of a failed network step (default 10; doubles).
#
# Re-running is safe: when every pin is already installed nothing is downloaded or installed; the check still runs.
set -euo pipefail

readonly SCRIPT_NAME="install-mxnet.sh"
readonly DEFAULT_PYTHON="python3.11"
readonly REQUIRED_PYTHON_VERSION="3.11"
# What EMR 7 nodes are, for pip download on another machine: x86_64 Amazon Linux 2023 (glibc 2.34) with CPython 3.11.
# Both manylinux tags are needed: most wheels here are manylinux2014, onnxruntime's are manylinux_2_28.
readonly EMR_NODE_PLATFORM_OPTIONS=(
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
  --python-version "$REQUIRED_PYTHON_VERSION" --implementation cp --abi cp311 --abi abi3 --abi none
)
readonly PIP_SOCKET_TIMEOUT_SECONDS=60
readonly PIP_RETRIES=5
# One wall-clock bound per network step: a hung step fails the bootstrap action (and the cluster start) with a
# message instead of running into EMR's own bootstrap timeout with none.
readonly NETWORK_STEP_TIMEOUT_SECONDS=1800
readonly NETWORK_STEP_ATTEMPTS=3
readonly FIRST_RETRY_DELAY_SECONDS=${MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS:-10}

# The job's runtime: every package that requirements.in's job section needs (pyspark excluded: EMR ships Spark),
# with its whole dependency closure, each pinned exactly as in requirements.lock so every node gets the tested
# resolution. requirements.lock stays the single source of truth: tests/bootstrap/test_bootstrap_pins.py derives
# this list from requirements.in + requirements.lock and fails on any difference. The copy is here because an EMR
# bootstrap action is one script fetched on its own, with nothing of the repository beside it.
readonly SHARED_REQUIREMENTS=(
  "boto3==1.44.8"
  "botocore==1.44.8"
  "certifi==2026.10.19.post1"
  "charset-normalizer==3.5.3"
  "coloredlogs==15.0.1"
  "flatbuffers==25.12.19"
  "graphviz==0.8.4"
  "humanfriendly==10.0"
  "idna==3.20"
  "jmespath==1.1.0"
  "mpmath==1.3.0"
  "numpy==1.23.5"
  "opencv-python-headless==4.10.0.84"
  "packaging==26.4"
  "pandas==2.2.3"
  "pillow==11.3.0"
  "protobuf==7.36.2"
  "pyarrow==19.0.1"
  "python-dateutil==2.9.0.post0"
  "pytz==2026.6"
  "requests==2.34.2"
  "s3transfer==0.19.3"
  "six==1.17.0"
  "sympy==1.14.0"
  "tzdata==2026.6"
  "urllib3==2.8.0"
)
readonly CPU_REQUIREMENTS=(
  "mxnet==1.9.1"
  "onnxruntime==1.20.1"
)
# mxnet-cu117 rather than cu112: the two 1.9.1 CUDA wheels are built for the same GPU architectures (sm_50/60/70/80/86
# in MXNet's config/distribution/linux_cu112.cmake and linux_cu117.cmake), so the newer CUDA 11 runtime costs nothing.
# Each wheel (~500 MB) carries its CUDA libraries, so the node needs only the NVIDIA driver: CUDA 11.x code runs on
# any driver from 450.80.02 on (CUDA minor-version compatibility), and newer drivers, such as the CUDA 12 drivers of
# current GPU AMIs, run older CUDA runtimes. Native kernels: g4dn (T4, sm_75), g5 (A10G, sm_86), p3 (V100), p4d
# (A100); newer GPUs (g6's L4, sm_89) run the sm_86 PTX through the driver's JIT, which slows the first start.
# onnxruntime-gpu has no 1.20.1 on PyPI: 1.20.2 is the same 1.20 line as the lock's onnxruntime and accepts numpy
# 1.23.5 (numpy>=1.21.6). Unlike MXNet, its CUDA provider loads the CUDA 12 and cuDNN 9 libraries from the node.
readonly GPU_REQUIREMENTS=(
  "mxnet-cu117==1.9.1"
  "onnxruntime-gpu==1.20.2"
)
# Distributions that provide the same import package as the other compute's build (`mxnet`, `onnxruntime`):
# installing one over the other leaves a mixed tree, so the script refuses instead.
readonly CPU_CONFLICTS=("mxnet-cu117" "onnxruntime-gpu")
readonly GPU_CONFLICTS=("mxnet" "onnxruntime")
# PCI vendor id of NVIDIA. compute=gpu also runs on the primary node, which may have no GPU; there the CUDA build
# could not even be imported (libmxnet.so links the driver's libcuda.so.1), so such a node gets the cpu build.
readonly NVIDIA_PCI_VENDOR_ID="0x10de"

log() {
  printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$SCRIPT_NAME" "$*" >&2
}

fail() {
  log "error: $*"
  exit 1
}

usage_error() {
  log "error: $*"
  log "usage: $SCRIPT_NAME cpu|gpu [WHEELHOUSE] | --build-wheelhouse cpu|gpu DIRECTORY | --print-requirements cpu|gpu"
  exit 2
}

# retry ATTEMPTS COMMAND...: runs COMMAND until it succeeds, at most ATTEMPTS times, doubling the wait each time.
retry() {
  local attempts=$1
  shift
  local attempt=1
  local delay_seconds=$FIRST_RETRY_DELAY_SECONDS
  until "$@"; do
    if ((attempt >= attempts)); then
      log "giving up after $attempts attempts: $*"
      return 1
    fi
    log "attempt $attempt of $attempts failed; retrying in ${delay_seconds}s: $*"
    sleep "$delay_seconds"
    attempt=$((attempt + 1))
    delay_seconds=$((delay_seconds * 2))
  done
}

requirements_for() {
  local compute=$1
  printf '%s\n' "${SHARED_REQUIREMENTS[@]}"
  if [[ $compute == "gpu" ]]; then
    printf '%s\n' "${GPU_REQUIREMENTS[@]}"
  else
    printf '%s\n' "${CPU_REQUIREMENTS[@]}"
  fi
}

# Reads the PCI bus through sysfs, which needs neither the NVIDIA driver nor pciutils.
has_nvidia_device() {
  local vendor_file
  for vendor_file in /sys/bus/pci/devices/*/vendor; do
    if [[ -r $vendor_file && $(<"$vendor_file") == "$NVIDIA_PCI_VENDOR_ID" ]]; then
      return 0
    fi
  done
  return 1
}

validate_compute() {
  local compute=${1:-}
  if [[ $compute != "cpu" && $compute != "gpu" ]]; then
    usage_error "compute must be 'cpu' or 'gpu', got '${compute}'"
  fi
}

# Prints the names of the given distributions that are installed in $PYTHON (names compared as PEP 503 normalises
# them).
installed_among() {
  "$PYTHON" - "$@" <<'PY'
import importlib.metadata
import re
import sys

def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()

installed = {normalise(d.metadata["Name"]) for d in importlib.metadata.distributions() if d.metadata["Name"]}
for name in sys.argv[1:]:
    if normalise(name) in installed:
        print(name)
PY
}

# Prints every NAME==VERSION requirement that $PYTHON does not have installed at exactly that version.
missing_requirements() {
  "$PYTHON" - "$@" <<'PY'
import importlib.metadata
import re
import sys

def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()

installed = {}
# The first distribution on sys.path wins, as it does for `import`.
for dist in importlib.metadata.distributions():
    if dist.metadata["Name"]:
        installed.setdefault(normalise(dist.metadata["Name"]), dist.version)
for requirement in sys.argv[1:]:
    name, version = requirement.split("==")
    if installed.get(normalise(name)) != version:
        print(requirement)
PY
}

# Sets MISSING to the pins among the arguments that are not installed. A command substitution, not `< <(...)`, so
# that a failing check stops the script instead of reading as "nothing missing".
find_missing() {
  local listing
  listing=$(missing_requirements "$@")
  MISSING=()
  if [[ -n $listing ]]; then
    mapfile -t MISSING <<<"$listing"
  fi
}

# Sets AS_ROOT to `sudo -n` when the interpreter's site-packages are not writable by this user. EMR runs bootstrap
# actions as `hadoop`, which has password-less sudo; -n makes a missing sudo right fail at once instead of hanging.
choose_privilege() {
  AS_ROOT=()
  if ((EUID == 0)); then
    return
  fi
  local site_dir
  while IFS= read -r site_dir; do
    if [[ ! -w $site_dir ]]; then
      AS_ROOT=(sudo -n)
      return
    fi
  done < <("$PYTHON" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])')
}

fetch_wheelhouse() {
  local source=$1
  if [[ $source == s3://* ]]; then
    WHEELHOUSE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mxnet-wheelhouse.XXXXXX")
    # Removed on exit: the CUDA wheels alone are hundreds of MB on a small root volume.
    trap 'rm -rf "$WHEELHOUSE_DIR"' EXIT
    log "step: downloading wheelhouse $source to $WHEELHOUSE_DIR"
    # The CLI retries each request itself (standard mode, 5 attempts); retry() repeats the whole copy.
    retry "$NETWORK_STEP_ATTEMPTS" timeout "$NETWORK_STEP_TIMEOUT_SECONDS" \
      env AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=5 \
      aws s3 cp --recursive --only-show-errors --cli-connect-timeout 20 --cli-read-timeout 120 \
      "$source" "$WHEELHOUSE_DIR"
  else
    WHEELHOUSE_DIR=$source
    log "step: using local wheelhouse $WHEELHOUSE_DIR"
  fi
  local wheel_count
  wheel_count=$(find "$WHEELHOUSE_DIR" -maxdepth 1 -name '*.whl' | wc -l)
  if ((wheel_count == 0)); then
    fail "wheelhouse '$source' holds no .whl files; fill one with: $SCRIPT_NAME --build-wheelhouse cpu|gpu DIRECTORY"
  fi
  log "wheelhouse holds $wheel_count wheels"
}

install_requirements() {
  local -a pip_options=(
    --disable-pip-version-check --no-input --no-cache-dir
    --timeout "$PIP_SOCKET_TIMEOUT_SECONDS" --retries "$PIP_RETRIES"
    # Wheels only: a source build at boot would need compilers and take minutes; a missing wheel must fail here.
    --only-binary=:all:
  )
  if [[ -n ${WHEELHOUSE_DIR:-} ]]; then
    pip_options+=(--no-index --find-links "$WHEELHOUSE_DIR")
  fi
  # A distribution-managed interpreter (PEP 668 marker, outside a virtual environment) makes pip refuse unless told;
  # a pip new enough to honour the marker also knows the flag.
  if "$PYTHON" -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(not (sys.prefix == sys.base_prefix and os.path.exists(marker)))'; then
    pip_options+=(--break-system-packages)
  fi
  retry "$NETWORK_STEP_ATTEMPTS" timeout "$NETWORK_STEP_TIMEOUT_SECONDS" \
    "${AS_ROOT[@]}" "$PYTHON" -m pip install "${pip_options[@]}" "$@"
}

verify_runtime() {
  local compute=$1
  "$PYTHON" - "$compute" <<'PY'
import sys

compute = sys.argv[1]

import boto3
import cv2
import mxnet as mx
import numpy as np
import onnxruntime
import pandas
import PIL
import pyarrow

print(
    f"imports ok: mxnet {mx.__version__}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, "
    f"pyarrow {pyarrow.__version__}, pandas {pandas.__version__}, pillow {PIL.__version__}, "
    f"opencv {cv2.__version__}, boto3 {boto3.__version__}",
    file=sys.stderr,
)

contexts = [mx.cpu()]
if compute == "gpu":
    gpu_count = mx.context.num_gpus()
    if gpu_count < 1:
        sys.exit("compute=gpu but MXNet sees no GPU (mx.context.num_gpus() == 0): check the NVIDIA driver "
                 "(nvidia-smi) and that the instance type has a GPU")
    print(f"MXNet sees {gpu_count} GPU(s)", file=sys.stderr)
    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        sys.exit(f"compute=gpu but onnxruntime offers only {providers}: install onnxruntime-gpu, not onnxruntime")
    contexts.append(mx.gpu(0))

for context in contexts:
    # A tiny network end to end: initialise, run one batch, copy the result back (asnumpy waits for the engine).
    network = mx.gluon.nn.Conv2D(channels=4, kernel_size=3, in_channels=3)
    network.initialize(ctx=context)
    output = network(mx.nd.ones((1, 3, 8, 8), ctx=context)).asnumpy()
    if output.shape != (1, 4, 6, 6) or not np.isfinite(output).all():
        sys.exit(f"forward pass on {context} gave shape {output.shape} (expected (1, 4, 6, 6)) "
                 f"or non-finite values")
    print(f"forward pass on {context} ok: output shape {output.shape}", file=sys.stderr)
PY
}

# Sets PYTHON to the absolute path of the chosen interpreter (so sudo runs the same one, whatever its secure_path)
# and PYTHON_VERSION to its major.minor.
resolve_python() {
  local python_name=${MXNET_BOOTSTRAP_PYTHON:-$DEFAULT_PYTHON}
  PYTHON=$(command -v "$python_name") || fail "interpreter '$python_name' not found (set MXNET_BOOTSTRAP_PYTHON)"
  PYTHON_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    fail "interpreter $PYTHON does not run (set MXNET_BOOTSTRAP_PYTHON)"
}

has_pip() {
  "$PYTHON" -m pip --version >/dev/null 2>&1
}

# Amazon Linux 2023 packages pip apart from the interpreter (python3.11-pip); its repositories are in S3, so this
# works through the VPC's S3 gateway endpoint too.
ensure_pip() {
  if has_pip; then
    return
  fi
  local package="python$PYTHON_VERSION-pip"
  if ! command -v dnf >/dev/null; then
    fail "$PYTHON has no pip, and there is no dnf to install $package with: install pip for it first"
  fi
  log "step: $PYTHON has no pip; installing $package with dnf"
  local -a as_root=()
  if ((EUID != 0)); then
    as_root=(sudo -n)
  fi
  retry "$NETWORK_STEP_ATTEMPTS" timeout "$NETWORK_STEP_TIMEOUT_SECONDS" "${as_root[@]}" dnf install -y "$package"
  has_pip || fail "$PYTHON still has no pip after installing $package"
}

validate_retry_delay() {
  if [[ ! $FIRST_RETRY_DELAY_SECONDS =~ ^[0-9]+$ ]]; then
    usage_error "MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS must be a whole number of seconds," \
      "got '$FIRST_RETRY_DELAY_SECONDS'"
  fi
}

build_wheelhouse() {
  local compute=$1
  local destination=$2
  local -a requirements
  mapfile -t requirements < <(requirements_for "$compute")
  resolve_python
  has_pip || fail "$PYTHON has no pip (set MXNET_BOOTSTRAP_PYTHON to a Python with pip)"
  log "step: downloading ${#requirements[@]} $compute wheels for EMR 7 nodes into $destination (pip of $PYTHON)"
  mkdir -p "$destination"
  # --no-deps: the list is already the whole dependency closure, and pip cannot resolve dependencies for a
  # platform other than its own.
  retry "$NETWORK_STEP_ATTEMPTS" timeout "$NETWORK_STEP_TIMEOUT_SECONDS" \
    "$PYTHON" -m pip download --disable-pip-version-check --no-input \
    --timeout "$PIP_SOCKET_TIMEOUT_SECONDS" --retries "$PIP_RETRIES" \
    --no-deps --only-binary=:all: "${EMR_NODE_PLATFORM_OPTIONS[@]}" --dest "$destination" "${requirements[@]}"
  log "done: $destination holds a wheel for each of the ${#requirements[@]} pins; upload it and pass its s3:// URI"
}

install_runtime() {
  local requested_compute=$1
  local wheelhouse=$2

  log "step: checking the interpreter (compute=$requested_compute, wheelhouse=${wheelhouse:-none: PyPI})"
  resolve_python
  if [[ $PYTHON_VERSION != "$REQUIRED_PYTHON_VERSION" ]]; then
    fail "interpreter $PYTHON is Python $PYTHON_VERSION; the pinned wheels and EMR's PySpark" \
      "need Python $REQUIRED_PYTHON_VERSION (set MXNET_BOOTSTRAP_PYTHON)"
  fi
  ensure_pip
  choose_privilege
  log "interpreter $PYTHON (Python $PYTHON_VERSION), installing ${AS_ROOT[*]:-as the current user}"

  log "step: choosing the build for this node"
  local compute=$requested_compute
  if [[ $requested_compute == "gpu" ]] && ! has_nvidia_device; then
    compute="cpu"
    log "compute=gpu, but this node has no NVIDIA device (PCI vendor $NVIDIA_PCI_VENDOR_ID), as on a CPU primary" \
      "node: installing the cpu build, since the CUDA build cannot be imported without the NVIDIA driver"
  fi
  log "installing the $compute build"

  log "step: checking for the other compute's builds"
  local -a conflicts
  if [[ $compute == "gpu" ]]; then
    conflicts=("${GPU_CONFLICTS[@]}")
  else
    conflicts=("${CPU_CONFLICTS[@]}")
  fi
  local found_conflicts
  found_conflicts=$(installed_among "${conflicts[@]}")
  if [[ -n $found_conflicts ]]; then
    fail "compute=$compute, but $PYTHON already has $(echo "$found_conflicts" | paste -sd, -)," \
      "which provide the same modules; uninstall them first"
  fi

  log "step: comparing installed packages with the pins"
  local -a requirements
  mapfile -t requirements < <(requirements_for "$compute")
  find_missing "${requirements[@]}"
  if ((${#MISSING[@]} == 0)); then
    log "all ${#requirements[@]} pinned packages already installed; nothing to install"
  else
    local -a to_install=("${MISSING[@]}")
    log "${#to_install[@]} of ${#requirements[@]} pinned packages to install: ${to_install[*]}"
    if [[ -n $wheelhouse ]]; then
      fetch_wheelhouse "$wheelhouse"
    fi
    log "step: installing with pip"
    install_requirements "${requirements[@]}"
    find_missing "${requirements[@]}"
    if ((${#MISSING[@]} > 0)); then
      fail "after pip install these pins are still not installed: ${MISSING[*]}"
    fi
    log "installed ${#to_install[@]} packages: ${to_install[*]}"
  fi

  log "step: verifying imports and one forward pass"
  # Without the driver, importing the CUDA build fails on a missing libcuda.so.1; say what is actually wrong.
  if [[ $compute == "gpu" && ! -e /proc/driver/nvidia/version ]]; then
    fail "this node has an NVIDIA device but no loaded NVIDIA driver (no /proc/driver/nvidia/version);" \
      "the CUDA build of MXNet needs it: use an EMR release and instance type with GPU support"
  fi
  verify_runtime "$compute" || fail "the $compute runtime does not work (the lines above say why)"
  log "done: the $compute runtime is installed and works"
}

main() {
  validate_retry_delay
  case ${1:-} in
    --print-requirements)
      (($# == 2)) || usage_error "--print-requirements takes one argument (cpu|gpu), got $(($# - 1))"
      validate_compute "$2"
      requirements_for "$2"
      ;;
    --build-wheelhouse)
      (($# == 3)) || usage_error "--build-wheelhouse takes two arguments (cpu|gpu DIRECTORY), got $(($# - 1))"
      validate_compute "$2"
      build_wheelhouse "$2" "$3"
      ;;
    *)
      (($# == 1 || $# == 2)) || usage_error "expected 1 or 2 arguments, got $#"
      validate_compute "$1"
      # Checked now, not only when something is missing, so a wrong path shows on the first cluster, not later.
      if [[ -n ${2:-} && ${2:-} != s3://* && ! -d ${2:-} ]]; then
        usage_error "wheelhouse '$2' is neither an s3:// URI nor an existing directory"
      fi
      install_runtime "$1" "${2:-}"
      ;;
  esac
}

main "$@"
