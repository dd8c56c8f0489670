#!/usr/bin/env bash
# EMR bootstrap action: installs the inference job's Python runtime (MXNet 1.9.1 and its pinned companions) into the
# Python that PySpark uses on EMR 7.x (Amazon Linux 2023, python3.11), then proves it works with one forward pass.
# A Graviton (aarch64) node without Arm Performance Libraries, which MXNet's aarch64 wheel links and no Amazon Linux
# 2023 package provides (every stock EMR node), gets everything but MXNet: it runs ONNX packages only.
#
# Usage:
#   install-mxnet.sh cpu|gpu [WHEELHOUSE]                    # on an EMR node (the bootstrap action)
#   install-mxnet.sh --build-wheelhouse cpu|gpu DIRECTORY [x86_64|aarch64]
#                                                             # anywhere with pip and PyPI: fills DIRECTORY/<machine>/
#   install-mxnet.sh --print-requirements cpu|gpu             # the pinned list, one per line
#   install-mxnet.sh --print-cuda-library-dirs                # where the installed CUDA wheels keep their libraries
#   install-mxnet.sh --print-system-libraries x86_64|aarch64  # the system libraries of a node of that machine, one
#                                                             # soname:package[:framework] per line (empty package: no
#                                                             # dnf one; a framework: only it links the library, and a
#                                                             # node without the library installs all but it)
#
#   cpu|gpu     which MXNet and ONNX Runtime builds to install (see GPU_REQUIREMENTS for the CUDA choice). With
#               gpu, a node without an NVIDIA device (a CPU primary) gets the cpu build and the log says so.
#   WHEELHOUSE  optional: s3://bucket/prefix/ or a local directory with one folder per machine architecture
#               (x86_64/, aarch64/: what `uname -m` says), each holding a wheel for every pinned requirement (what
#               --build-wheelhouse downloads for EMR nodes of that architecture, whatever machine it runs on; a gpu
#               wheelhouse holds the cpu build too, for the primary node). A node installs from its own machine's
#               folder with pip --no-index --find-links, so nodes in private subnets (S3 gateway endpoint, no NAT)
#               need no internet; from S3 it downloads, to /var/tmp, only the wheels of its own build's missing pins.
#               Without it pip downloads from PyPI, and picks the node's architecture's wheels by itself.
#
# Environment:
#   MXNET_BOOTSTRAP_PYTHON  interpreter to install into (default: python3.11, which the stack sets as PYSPARK_PYTHON);
#                           for --build-wheelhouse, any Python with pip.
#   MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS  wait before the first retry of a failed network step (default 10; doubles).
#   MXNET_BOOTSTRAP_DEADLINE_SECONDS     the whole script's time limit (default 1800): no network step or wait for
#                                        the NVIDIA driver runs past it.
#   For the tests only (defaults are the real locations): MXNET_BOOTSTRAP_IMDS_ENDPOINT (the instance metadata
#   service), MXNET_BOOTSTRAP_PCI_DEVICES_DIR (/sys/bus/pci/devices), MXNET_BOOTSTRAP_NVIDIA_DRIVER_FILE
#   (/proc/driver/nvidia/version), MXNET_BOOTSTRAP_MACHINE (`uname -m`), MXNET_BOOTSTRAP_LDCONFIG (/sbin/ldconfig),
#   MXNET_BOOTSTRAP_DOWNLOAD_DIR (/var/tmp: where an s3:// wheelhouse is downloaded; never the tmpfs /tmp).
#
# Re-running is safe: when every pin is already installed nothing is downloaded or installed; the check still runs.
set -euo pipefail

readonly SCRIPT_NAME="install-mxnet.sh"
readonly DEFAULT_PYTHON="python3.11"
readonly REQUIRED_PYTHON_VERSION="3.11"
# The machine architectures EMR 7 nodes have: x86_64, and aarch64 on Graviton instance types (uname -m's names).
readonly MACHINES=("x86_64" "aarch64")
readonly DEFAULT_MACHINE="x86_64"
# This node's machine, for the wheelhouse folder and the loader's cache.
readonly MACHINE=${MXNET_BOOTSTRAP_MACHINE:-$(uname -m)}
readonly PIP_SOCKET_TIMEOUT_SECONDS=60
readonly PIP_RETRIES=5
# Wall-clock bounds: each attempt of a network step, and the whole script. A hung mirror fails the bootstrap action
# (and the cluster start) with a message naming the step, well inside EMR's own bootstrap time limit (which EMR does
# not document; it reports "bootstrap action timed out" with nothing more), and stops billing idle instances sooner.
# 300 s is ample for one attempt: the gpu wheelhouse (3.9 GB) takes about a minute from S3 in the same region.
readonly NETWORK_STEP_TIMEOUT_SECONDS=300
readonly NETWORK_STEP_ATTEMPTS=3
readonly DEADLINE_SECONDS=${MXNET_BOOTSTRAP_DEADLINE_SECONDS:-1800}
readonly FIRST_RETRY_DELAY_SECONDS=${MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS:-10}
# IMDSv2 (the stack's security configuration requires session tokens): the instance's own region.
readonly IMDS_ENDPOINT=${MXNET_BOOTSTRAP_IMDS_ENDPOINT:-http://169.254.169.254}
readonly PCI_DEVICES_DIR=${MXNET_BOOTSTRAP_PCI_DEVICES_DIR:-/sys/bus/pci/devices}
readonly NVIDIA_DRIVER_FILE=${MXNET_BOOTSTRAP_NVIDIA_DRIVER_FILE:-/proc/driver/nvidia/version}
# EMR does not document when the NVIDIA driver is loaded on a GPU node; give it this long (within the deadline).
readonly DRIVER_WAIT_SECONDS=600
readonly DRIVER_POLL_SECONDS=2
# The oldest driver that runs CUDA 12 libraries (CUDA minor version compatibility): ONNX Runtime's CUDA provider and
# the cuRAND both runtimes share are CUDA 12 builds. MXNet's CUDA 11 libraries need 450.80.02, which this implies.
readonly MINIMUM_DRIVER_VERSION="525.60.13"
# System libraries the runtime links and no wheel ships, per machine architecture, as soname:package (an empty
# package: Amazon Linux 2023 has none). Derived from the ELF DT_NEEDED closure of the pinned wheels' native libraries,
# minus what every Amazon Linux 2023 node has (glibc, libgcc_s, libstdc++): `make arch-check` records it for the cpu
# builds of both machines and `make gpu-check` for the gpu build (tests/bootstrap/fixtures/closure-*.json), and a test
# fails when these lists differ from the recorded closures. Bootstrap actions run before EMR installs its
# applications, so nothing else brings them yet.
# x86_64: libmxnet.so and OpenBLAS need libgomp, MXNet's bundled libgfortran.so.3 needs libquadmath (their licences
# keep both out of the wheel, apache/mxnet#20068), and cuDNN needs zlib.
readonly SYSTEM_LIBRARIES_X86_64=("libgomp.so.1:libgomp" "libquadmath.so.0:libquadmath" "libz.so.1:zlib")
# aarch64: libmxnet.so needs libgomp, and its bundled libgfortran.so.5 needs zlib. No libquadmath: GCC builds it only
# where it has __float128 (x86, ia64, ppc64le), and the aarch64 libgfortran does not link it. libmxnet.so also links
# Arm Performance Libraries (ArmPL: libarmpl_lp64_mp.so, libamath.so, libastring.so), which the wheel leaves out for
# their licence (apache/mxnet#20294) and no Amazon Linux 2023 repository carries. Only MXNet links them (ONNX Runtime
# needs none of these), so they are optional, marked with a third field naming the framework that links them: a node
# that has them (an EMR custom AMI) installs MXNet, a node without them (a stock one) installs everything but MXNet and
# runs ONNX packages only.
readonly SYSTEM_LIBRARIES_AARCH64=(
  "libgomp.so.1:libgomp"
  "libz.so.1:zlib"
  "libarmpl_lp64_mp.so::mxnet"
  "libamath.so::mxnet"
  "libastring.so::mxnet"
)
readonly LDCONFIG=${MXNET_BOOTSTRAP_LDCONFIG:-/sbin/ldconfig}
# Where an s3:// wheelhouse is downloaded to: the root volume (EBS_ROOT_VOLUME_GIB in infra/cluster_definition.py),
# never /tmp, which on Amazon Linux 2023 is a tmpfs of at most half the memory (the gpu wheels alone are 3.9 GB).
# TMPDIR is not read, so that no environment can put the download back into memory.
readonly DOWNLOAD_PARENT=${MXNET_BOOTSTRAP_DOWNLOAD_DIR:-/var/tmp}
# Where the gpu build's CUDA library directories are made known to the dynamic loader (see configure_cuda_libraries).
readonly LOADER_CONFIG_FILE="/etc/ld.so.conf.d/mxnet-inference-cuda-wheels.conf"

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
  "contourpy==1.3.2"
  "cycler==0.12.1"
  "flatbuffers==25.12.19"
  "fonttools==4.68.0"
  "graphviz==0.8.4"
  "humanfriendly==10.0"
  "idna==3.20"
  "jinja2==3.1.6"
  "jmespath==1.1.0"
  "kiwisolver==1.5.1"
  "markupsafe==3.0.4"
  "matplotlib==3.10.9"
  "mpmath==1.3.0"
  "numpy==1.23.5"
  "opencv-python-headless==4.10.0.84"
  "packaging==26.4"
  "pandas==2.2.3"
  "pillow==11.3.0"
  "protobuf==7.36.2"
  "pyarrow==19.0.1"
  "pyparsing==3.3.3"
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
# Native kernels: g4dn (T4, sm_75), g5 (A10G, sm_86), p3 (V100), p4d (A100); newer GPUs (g6's L4, sm_89) run the
# sm_86 PTX through the driver's JIT, which slows the first start.
# Neither CUDA build ships its CUDA libraries: libmxnet.so links the CUDA 11 runtime, cuBLAS, cuFFT, cuRAND,
# cuSOLVER, cuSPARSE, NVRTC, NVTX, cuDNN 8 and NCCL 2, and ONNX Runtime's CUDA provider links CUDA 12 and cuDNN 9.
# NVIDIA publishes each as a wheel (nvidia-*-cu11, nvidia-*-cu12); configure_cuda_libraries makes them findable.
# onnxruntime-gpu has no 1.20.1 on PyPI: 1.20.2 is the same 1.20 line as the lock's onnxruntime and accepts numpy
# 1.23.5 (numpy>=1.21.6).
# requirements-gpu.txt holds these pins with their hashes and says why each version; a test keeps the two equal, and
# `make gpu-check` proves every library these wheels need resolves on a node.
readonly GPU_REQUIREMENTS=(
  "mxnet-cu117==1.9.1"
  "onnxruntime-gpu==1.20.2"
  "nvidia-cuda-runtime-cu11==11.8.89"
  "nvidia-cublas-cu11==11.11.3.6"
  "nvidia-cufft-cu11==10.9.0.58"
  "nvidia-cusolver-cu11==11.4.1.48"
  "nvidia-cusparse-cu11==11.7.5.86"
  "nvidia-cuda-nvrtc-cu11==11.8.89"
  "nvidia-nvtx-cu11==11.8.86"
  "nvidia-cudnn-cu11==8.7.0.84"
  "nvidia-nccl-cu11==2.20.5"
  "nvidia-cuda-runtime-cu12==12.4.127"
  "nvidia-cublas-cu12==12.4.5.8"
  "nvidia-cufft-cu12==11.2.1.3"
  "nvidia-curand-cu12==10.3.5.147"
  "nvidia-cuda-nvrtc-cu12==12.4.127"
  "nvidia-cudnn-cu12==9.1.0.70"
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
  log "usage: $SCRIPT_NAME cpu|gpu [WHEELHOUSE] | --build-wheelhouse cpu|gpu DIRECTORY [x86_64|aarch64]" \
    "| --print-requirements cpu|gpu" \
    "| --print-cuda-library-dirs" \
    "| --print-system-libraries x86_64|aarch64"
  exit 2
}

# Seconds left before the script's deadline (bash's SECONDS counts from the script's start).
remaining_seconds() {
  echo $((DEADLINE_SECONDS - SECONDS))
}

# retry COMMAND...: runs COMMAND (an executable, not a function) until it succeeds, at most NETWORK_STEP_ATTEMPTS
# times, each attempt killed after NETWORK_STEP_TIMEOUT_SECONDS, doubling the wait between attempts; never past the
# script's deadline.
retry() {
  local attempt=1
  local delay_seconds=$FIRST_RETRY_DELAY_SECONDS
  local remaining
  while true; do
    remaining=$(remaining_seconds)
    if ((remaining <= 0)); then
      log "giving up: the bootstrap's deadline of ${DEADLINE_SECONDS}s has passed: $*"
      return 1
    fi
    if timeout "$((remaining < NETWORK_STEP_TIMEOUT_SECONDS ? remaining : NETWORK_STEP_TIMEOUT_SECONDS))" "$@"; then
      return 0
    fi
    if ((attempt >= NETWORK_STEP_ATTEMPTS)); then
      log "giving up after $NETWORK_STEP_ATTEMPTS attempts: $*"
      return 1
    fi
    if ((delay_seconds >= $(remaining_seconds))); then
      log "giving up: the bootstrap's deadline of ${DEADLINE_SECONDS}s leaves no time for another attempt: $*"
      return 1
    fi
    log "attempt $attempt of $NETWORK_STEP_ATTEMPTS failed; retrying in ${delay_seconds}s: $*"
    sleep "$delay_seconds"
    attempt=$((attempt + 1))
    delay_seconds=$((delay_seconds * 2))
  done
}

# Prints pip's options for EMR 7 nodes of machine $1, one per line, for pip download on another machine: Amazon Linux
# 2023 (glibc 2.34) with CPython 3.11. Both manylinux tags are needed: most wheels here are manylinux2014 (glibc 2.17),
# onnxruntime's and matplotlib's are manylinux_2_27/2_28, which pip accepts under manylinux_2_28.
emr_node_platform_options() {
  local machine=$1
  printf '%s\n' --platform "manylinux2014_$machine" --platform "manylinux_2_28_$machine" \
    --python-version "$REQUIRED_PYTHON_VERSION" --implementation cp --abi cp311 --abi abi3 --abi none
}

validate_machine() {
  local machine=$1
  if [[ $machine != "x86_64" && $machine != "aarch64" ]]; then
    usage_error "machine must be one of ${MACHINES[*]}, got '${machine}'"
  fi
}

# MXNet's CUDA build and NVIDIA's library wheels exist for x86_64 only.
refuse_gpu_on() {
  local machine=$1
  if [[ $machine != "x86_64" ]]; then
    fail "compute=gpu needs an x86_64 node: mxnet-cu117 and NVIDIA's CUDA library wheels have no $machine build" \
      "(a Graviton cluster runs compute=cpu)"
  fi
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

# Prints the pins this node installs for compute $1: requirements_for's, without MXNet's when this node refuses it
# (MXNET_REFUSED, set by ensure_system_libraries). The wheelhouse keeps the mxnet wheel either way: it is the same
# for a node that has ArmPL.
node_requirements() {
  if [[ -n ${MXNET_REFUSED:-} ]]; then
    requirements_for "$1" | grep -v '^mxnet=='
  else
    requirements_for "$1"
  fi
}

# Reads the PCI bus through sysfs, which needs neither the NVIDIA driver nor pciutils.
has_nvidia_device() {
  local vendor_file
  for vendor_file in "$PCI_DEVICES_DIR"/*/vendor; do
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

# Exports AWS_DEFAULT_REGION as this instance's region, read from the instance metadata service (IMDSv2: a session
# token first). Without a region the AWS CLI calls the us-east-1 global S3 endpoint, which a VPC's S3 gateway endpoint
# in another region does not route: in a private subnet without NAT the download would hang.
export_instance_region() {
  local -a curl_options=(--silent --show-error --fail --connect-timeout 2 --max-time 5 --retry 3)
  local token region
  token=$(curl "${curl_options[@]}" -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" \
    "$IMDS_ENDPOINT/latest/api/token") ||
    fail "the instance metadata service at $IMDS_ENDPOINT gave no IMDSv2 token; the region of this node is needed" \
      "to reach S3 through the VPC's endpoint"
  region=$(curl "${curl_options[@]}" -H "X-aws-ec2-metadata-token: $token" \
    "$IMDS_ENDPOINT/latest/meta-data/placement/region") ||
    fail "the instance metadata service at $IMDS_ENDPOINT did not give this node's region"
  if [[ ! $region =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]]; then
    fail "the instance metadata service gave '$region' as this node's region; expected a name such as eu-west-1"
  fi
  export AWS_DEFAULT_REGION=$region
  log "region $region (from the instance metadata service): S3 requests go to this region's endpoint"
}

# Prints, one per line, the wheel files of the listing $1 (`aws s3 ls` lines: date, time, size, name) that carry the
# pins given after it (a project's name compared as PEP 503 normalises it, its version exactly). Exits 1, naming
# them on stderr, when a pin has no wheel there.
wheels_for_pins() {
  "$PYTHON" -c '
import re
import sys

def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()

listing, pins = sys.argv[1], sys.argv[2:]
files = [line.split()[3] for line in listing.splitlines() if len(line.split()) == 4 and line.endswith(".whl")]
missing = []
for pin in pins:
    name, version = pin.split("==")
    chosen = [file for file in files
              if normalise(file.split("-")[0]) == normalise(name) and file.split("-")[1] == version]
    if chosen:
        print("\n".join(chosen))
    else:
        missing.append(pin)
if missing:
    sys.exit("no wheel for " + " ".join(missing))
' "$@"
}

# fetch_wheelhouse WHEELHOUSE COMPUTE PIN...: sets WHEELHOUSE_DIR to a local directory holding this node's machine's
# wheels of WHEELHOUSE for the PINs. From S3 it downloads only those wheels: a gpu wheelhouse also holds the cpu build
# (for the primary node, which has no GPU), and such a node must not copy the 3.9 GB of CUDA wheels it cannot use.
fetch_wheelhouse() {
  local source="${1%/}/$MACHINE"
  local compute=$2
  shift 2
  if [[ $source == s3://* ]]; then
    export_instance_region
    local listing selection
    local -a wheels include_options=()
    log "step: listing wheelhouse $source/"
    listing=$(retry env AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=5 \
      aws s3 ls --cli-connect-timeout 20 --cli-read-timeout 120 "$source/") ||
      fail "cannot list wheelhouse $source/ (see the lines above); fill one with: $SCRIPT_NAME --build-wheelhouse" \
        "cpu|gpu DIRECTORY $MACHINE, which writes DIRECTORY/$MACHINE/, and upload DIRECTORY/"
    selection=$(wheels_for_pins "$listing" "$@") ||
      fail "wheelhouse $source/ has no wheel for some of the $compute build's pins (named above); a gpu" \
        "wheelhouse must hold the cpu build too, for the primary node: rebuild it with $SCRIPT_NAME" \
        "--build-wheelhouse $compute DIRECTORY $MACHINE"
    mapfile -t wheels <<<"$selection"
    local wheel
    for wheel in "${wheels[@]}"; do
      include_options+=(--include "$wheel")
    done
    WHEELHOUSE_DIR=$(mktemp -d "$DOWNLOAD_PARENT/mxnet-wheelhouse.XXXXXX") ||
      fail "cannot create a download directory in $DOWNLOAD_PARENT (MXNET_BOOTSTRAP_DOWNLOAD_DIR)"
    # Removed on exit: the CUDA wheels alone are 3.9 GB on the root volume.
    trap 'rm -rf "$WHEELHOUSE_DIR"' EXIT
    log "step: downloading the ${#wheels[@]} wheels of the $compute build's missing pins from $source/ to" \
      "$WHEELHOUSE_DIR"
    # The CLI retries each request itself (standard mode, 5 attempts); retry() repeats the whole copy.
    retry env AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=5 \
      aws s3 cp --recursive --only-show-errors --cli-connect-timeout 20 --cli-read-timeout 120 \
      --exclude "*" "${include_options[@]}" "$source/" "$WHEELHOUSE_DIR"
  else
    WHEELHOUSE_DIR=$source
    log "step: using local wheelhouse $WHEELHOUSE_DIR"
  fi
  local wheel_count=0
  if [[ -d $WHEELHOUSE_DIR ]]; then
    wheel_count=$(find "$WHEELHOUSE_DIR" -maxdepth 1 -name '*.whl' | wc -l)
  fi
  if ((wheel_count == 0)); then
    fail "wheelhouse '$source' holds no .whl files for this $MACHINE node; fill one with:" \
      "$SCRIPT_NAME --build-wheelhouse cpu|gpu DIRECTORY $MACHINE (it writes DIRECTORY/$MACHINE/)"
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
  retry "${AS_ROOT[@]}" "$PYTHON" -m pip install "${pip_options[@]}" "$@"
}

# verify_runtime COMPUTE FRAMEWORKS [CUDA_LIBRARY_DIR...]: imports everything installed, runs one forward pass per
# device, and with gpu proves that ONNX Runtime really runs on CUDA and that every CUDA library the process loaded
# came from the wheels. FRAMEWORKS is mxnet+onnxruntime, or onnxruntime on a node that refuses MXNet: MXNet is then
# not imported, and the forward pass is ONNX Runtime's.
verify_runtime() {
  "$PYTHON" - "$@" <<'PY'
import os
import sys

compute, frameworks, cuda_library_dirs = sys.argv[1], sys.argv[2].split("+"), set(sys.argv[3:])

import boto3
import cv2
import jinja2
import markupsafe
import matplotlib
import numpy as np
import onnxruntime
import pandas
import PIL
import pyarrow

if "mxnet" in frameworks:
    import mxnet as mx

    mxnet_version = f"mxnet {mx.__version__}"
else:
    mxnet_version = "no mxnet (ONNX packages only)"
print(
    f"imports ok: {mxnet_version}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, "
    f"pyarrow {pyarrow.__version__}, pandas {pandas.__version__}, pillow {PIL.__version__}, "
    f"opencv {cv2.__version__}, boto3 {boto3.__version__}, jinja2 {jinja2.__version__}, "
    f"markupsafe {markupsafe.__version__}, matplotlib {matplotlib.__version__} (the run report's)",
    file=sys.stderr,
)

if "mxnet" not in frameworks:
    # compute is cpu here (gpu is refused on aarch64): one ONNX Runtime session on the CPU, as the job runs it.
    from onnxruntime.datasets import get_example

    session = onnxruntime.InferenceSession(get_example("sigmoid.onnx"), providers=["CPUExecutionProvider"])
    session_input = session.get_inputs()[0]
    shape = [size if isinstance(size, int) else 1 for size in session_input.shape]
    output = session.run(None, {session_input.name: np.zeros(shape, dtype=np.float32)})[0]
    if output.shape != tuple(shape) or not np.allclose(output, 0.5):
        sys.exit(f"ONNX Runtime's forward pass of sigmoid(0) gave shape {output.shape} (expected {tuple(shape)}) or "
                 f"values other than 0.5")
    print(f"forward pass with ONNX Runtime on {session.get_providers()[0]} ok: output shape {output.shape}",
          file=sys.stderr)
    sys.exit(0)

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
    # ONNX Runtime lists the CUDA provider even when it cannot load it, and then runs on the CPU: only the providers
    # of a real session tell (its log above names the library that failed to load).
    from onnxruntime.datasets import get_example

    session = onnxruntime.InferenceSession(
        get_example("sigmoid.onnx"), providers=[("CUDAExecutionProvider", {"device_id": 0})])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        sys.exit(f"compute=gpu but an ONNX Runtime session runs on {session.get_providers()}: its CUDA provider "
                 f"needs the CUDA 12 and cuDNN 9 libraries of the nvidia-*-cu12 wheels (see the error above)")
    session_input = session.get_inputs()[0]
    session.run(None, {session_input.name: np.zeros(
        [size if isinstance(size, int) else 1 for size in session_input.shape], dtype=np.float32)})
    print(f"ONNX Runtime session on {session.get_providers()[0]} ok", file=sys.stderr)
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

if compute == "gpu":
    # Which files this process mapped: a CUDA library of the same name from elsewhere (a CUDA toolkit of the node in
    # the loader's path) would shadow the pinned one.
    with open("/proc/self/maps") as maps:
        mapped = {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}
    mapped = {path for path in mapped if path.startswith("/")}
    names_in_wheels = {name for directory in cuda_library_dirs for name in os.listdir(directory)}
    from_wheels = sorted(os.path.basename(path) for path in mapped
                         if os.path.dirname(os.path.realpath(path)) in cuda_library_dirs)
    shadowing = sorted(path for path in mapped if os.path.basename(path) in names_in_wheels
                       and os.path.dirname(os.path.realpath(path)) not in cuda_library_dirs)
    if shadowing:
        sys.exit(f"CUDA libraries loaded from outside the pinned wheels: {shadowing}: another copy comes first in the "
                 f"loader's search path; the runtime was tested with the wheels' copies")
    print(f"{len(from_wheels)} CUDA libraries loaded, all from the pinned wheels: {', '.join(from_wheels)}",
          file=sys.stderr)
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

# Sets SUDO to what runs a system command as root: nothing for root, else `sudo -n` (EMR runs bootstrap actions as
# `hadoop`, which has password-less sudo; -n fails at once instead of waiting for a password).
choose_system_privilege() {
  SUDO=()
  if ((EUID != 0)); then
    SUDO=(sudo -n)
  fi
}

# Bootstrap actions run before EMR installs its applications, and Python 3.11 is one of them: when the interpreter is
# not there yet, install it (Amazon Linux 2023 packages pip apart, as python3.11-pip). Only for a pythonX.Y name:
# any other MXNET_BOOTSTRAP_PYTHON is the caller's to provide.
ensure_python() {
  local python_name=${MXNET_BOOTSTRAP_PYTHON:-$DEFAULT_PYTHON}
  if command -v "$python_name" >/dev/null || [[ ! $python_name =~ ^python3\.[0-9]+$ ]]; then
    return
  fi
  if ! command -v dnf >/dev/null; then
    fail "interpreter '$python_name' not found, and there is no dnf to install $python_name with:" \
      "install it first (or set MXNET_BOOTSTRAP_PYTHON)"
  fi
  log "step: $python_name not found; installing $python_name and $python_name-pip with dnf"
  retry "${SUDO[@]}" dnf install -y "$python_name" "$python_name-pip"
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
  retry "${SUDO[@]}" dnf install -y "$package"
  has_pip || fail "$PYTHON still has no pip after installing $package"
}

# Whether the dynamic loader's cache knows a library of this node's machine with this soname (ldconfig -p names the
# architecture of each entry: "(libc6,x86-64)" or "(libc6,AArch64)").
loader_knows() {
  local cache_architecture="x86-64"
  if [[ $MACHINE == "aarch64" ]]; then
    cache_architecture="AArch64"
  fi
  "$LDCONFIG" -p | awk -v soname="$1" -v arch="$cache_architecture" \
    '$1 == soname && index($0, "," arch ")") { found = 1 } END { exit !found }'
}

# Prints the system libraries of machine $1 (see SYSTEM_LIBRARIES_X86_64), one soname:package[:framework] per line.
system_libraries_for() {
  if [[ $1 == "aarch64" ]]; then
    printf '%s\n' "${SYSTEM_LIBRARIES_AARCH64[@]}"
  else
    printf '%s\n' "${SYSTEM_LIBRARIES_X86_64[@]}"
  fi
}

# Installs with dnf this machine's system libraries that the loader does not know yet; does nothing (and needs no
# network) when all are there. A missing library that only MXNet links and no package provides (ArmPL on aarch64)
# sets MXNET_REFUSED: the node then installs everything but MXNet. Fails at once, before any download, on any other
# missing library that no Amazon Linux 2023 package provides. The Amazon Linux 2023 repositories are in S3, so dnf
# works through the VPC's S3 gateway endpoint.
ensure_system_libraries() {
  local entry soname package framework
  local -a entries present=() missing_packages=() unavailable=() missing_for_mxnet=()
  mapfile -t entries < <(system_libraries_for "$MACHINE")
  for entry in "${entries[@]}"; do
    IFS=: read -r soname package framework <<<"$entry"
    if loader_knows "$soname"; then
      present+=("$soname")
    elif [[ $framework == "mxnet" ]]; then
      missing_for_mxnet+=("$soname")
    elif [[ -z $package ]]; then
      unavailable+=("$soname")
    else
      missing_packages+=("$package")
    fi
  done
  if ((${#unavailable[@]} > 0)); then
    fail "this $MACHINE node lacks ${unavailable[*]}, which the runtime links and no Amazon Linux 2023 package" \
      "provides"
  fi
  MXNET_REFUSED=""
  if ((${#missing_for_mxnet[@]} > 0)); then
    MXNET_REFUSED="this $MACHINE node lacks ${missing_for_mxnet[*]}"
    log "MXNet packages will be refused on this node: it lacks ${missing_for_mxnet[*]} (Arm Performance" \
      "Libraries), which MXNet's $MACHINE wheel links but does not ship (apache/mxnet#20294) and no Amazon Linux" \
      "2023 package provides; installing everything but MXNet, for ONNX packages (for MXNet packages, use an EMR" \
      "custom AMI with ArmPL known to the loader, or x86_64 instance types)"
  fi
  if ((${#missing_packages[@]} == 0)); then
    log "system libraries present: ${present[*]}"
    return
  fi
  if ! command -v dnf >/dev/null; then
    fail "the runtime needs the system packages ${missing_packages[*]}, and there is no dnf to install them with"
  fi
  log "installing ${missing_packages[*]} with dnf (already present: ${present[*]:-none})"
  retry "${SUDO[@]}" dnf install -y "${missing_packages[@]}"
  for entry in "${entries[@]}"; do
    IFS=: read -r soname package framework <<<"$entry"
    if [[ -n $package ]]; then
      loader_knows "$soname" || fail "$soname is still unknown to the loader after dnf installed $package"
    fi
  done
}

# Waits, within the deadline, for the NVIDIA driver that EMR's GPU AMI loads at boot (EMR does not document when),
# then checks that it runs CUDA 12 libraries.
wait_for_nvidia_driver() {
  local remaining limit waited=0
  remaining=$(remaining_seconds)
  limit=$((remaining < DRIVER_WAIT_SECONDS ? remaining : DRIVER_WAIT_SECONDS))
  until [[ -r $NVIDIA_DRIVER_FILE ]]; do
    if ((waited >= limit)); then
      fail "this node has an NVIDIA device but no NVIDIA driver was loaded after waiting ${waited}s" \
        "(no $NVIDIA_DRIVER_FILE); the CUDA builds need it: use an EMR release and instance type with GPU support"
    fi
    if ((waited == 0)); then
      log "waiting up to ${limit}s for the NVIDIA driver ($NVIDIA_DRIVER_FILE)"
    fi
    sleep "$DRIVER_POLL_SECONDS"
    waited=$((waited + DRIVER_POLL_SECONDS))
  done
  local version
  version=$(head -n 1 "$NVIDIA_DRIVER_FILE" | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1) || true
  if [[ -z $version ]]; then
    fail "cannot read the NVIDIA driver's version from the first line of $NVIDIA_DRIVER_FILE:" \
      "'$(head -n 1 "$NVIDIA_DRIVER_FILE")'"
  fi
  local oldest
  oldest=$(printf '%s\n' "$MINIMUM_DRIVER_VERSION" "$version" | sort -V | head -n 1)
  if [[ $oldest != "$MINIMUM_DRIVER_VERSION" ]]; then
    fail "NVIDIA driver $version is older than $MINIMUM_DRIVER_VERSION, the oldest that runs the CUDA 12 libraries" \
      "ONNX Runtime and cuRAND need: use a newer EMR release"
  fi
  log "NVIDIA driver $version loaded (waited ${waited}s; $MINIMUM_DRIVER_VERSION or newer is needed)"
}

# Prints, one per line, the directories holding the shared libraries of the installed nvidia-* distributions (the
# CUDA library wheels) of $PYTHON.
cuda_library_dirs() {
  "$PYTHON" - <<'PY'
import importlib.metadata
import os
import re

directories = set()
for distribution in importlib.metadata.distributions():
    if not re.sub(r"[-_.]+", "-", distribution.metadata["Name"] or "").lower().startswith("nvidia-"):
        continue
    for file in distribution.files or []:
        if re.search(r"\.so(\.\d+)*$", file.name):
            directories.add(os.path.dirname(os.path.realpath(distribution.locate_file(file))))
print("\n".join(sorted(directories)))
PY
}

# Makes the CUDA wheels' libraries findable through a loader configuration file and ldconfig. Why this way: the
# loader reads its cache in every process on the node, whoever starts it: this script's check, the Spark driver, and
# the executors and their Python workers, which YARN's container executor starts with an environment of its own. The
# alternatives through Spark are weaker: spark.executor.extraLibraryPath replaces EMR's default (the Hadoop native
# libraries), and LD_LIBRARY_PATH would come before every RUNPATH and shadow libraries for all programs started with
# it. The cache comes after LD_LIBRARY_PATH and each library's own RUNPATH, so a job that sets its own CUDA path still
# gets it. CUDA 11 and 12 cannot shadow each other here: their libraries have different sonames (libcudart.so.11.0 /
# .12, libcudnn.so.8 / .9, ...), and the one they share, libcurand.so.10, exists once (`make gpu-check` proves both).
configure_cuda_libraries() {
  local directories
  directories=$(cuda_library_dirs)
  if [[ -z $directories ]]; then
    fail "the gpu build is installed but $PYTHON has no nvidia-* CUDA library wheels"
  fi
  local content
  content=$(printf '# Written by %s: the CUDA library wheels of %s (mxnet-cu117, onnxruntime-gpu).\n%s' \
    "$SCRIPT_NAME" "$PYTHON" "$directories")
  if [[ ! -f $LOADER_CONFIG_FILE || $(<"$LOADER_CONFIG_FILE") != "$content" ]]; then
    printf '%s\n' "$content" | "${SUDO[@]}" tee "$LOADER_CONFIG_FILE" >/dev/null
  fi
  "${SUDO[@]}" "$LDCONFIG"
  CUDA_LIBRARY_DIRS=()
  mapfile -t CUDA_LIBRARY_DIRS <<<"$directories"
  log "loader configuration $LOADER_CONFIG_FILE lists ${#CUDA_LIBRARY_DIRS[@]} CUDA library directories"
}

validate_whole_number() {
  local variable=$1 value=$2
  # No leading zeros: bash arithmetic reads 010 as octal 8 and 08 as an error.
  if [[ ! $value =~ ^(0|[1-9][0-9]*)$ ]]; then
    usage_error "$variable must be a whole number of seconds without leading zeros, got '$value'"
  fi
}

build_wheelhouse() {
  local compute=$1
  local destination="${2%/}/$3"
  local machine=$3
  if [[ $compute == "gpu" ]]; then
    refuse_gpu_on "$machine"
  fi
  local -a requirements platform_options
  mapfile -t requirements < <(requirements_for "$compute")
  local builds="the $compute build"
  if [[ $compute == "gpu" ]]; then
    # The primary node of a gpu cluster has no GPU and installs the cpu build (install_runtime): from this wheelhouse
    # too, when the nodes have no internet. Its two wheels add about 60 MB to the 3.9 GB.
    requirements+=("${CPU_REQUIREMENTS[@]}")
    builds="the gpu build, and the cpu build for the primary node"
  fi
  mapfile -t platform_options < <(emr_node_platform_options "$machine")
  resolve_python
  has_pip || fail "$PYTHON has no pip (set MXNET_BOOTSTRAP_PYTHON to a Python with pip)"
  log "step: downloading ${#requirements[@]} wheels for $machine EMR 7 nodes into $destination" \
    "($builds; pip of $PYTHON)"
  mkdir -p "$destination"
  # --no-deps: the list is already the whole dependency closure, and pip cannot resolve dependencies for a
  # platform other than its own.
  retry "$PYTHON" -m pip download --disable-pip-version-check --no-input \
    --timeout "$PIP_SOCKET_TIMEOUT_SECONDS" --retries "$PIP_RETRIES" \
    --no-deps --only-binary=:all: "${platform_options[@]}" --dest "$destination" "${requirements[@]}"
  log "done: $destination holds a wheel for each of the ${#requirements[@]} pins; upload ${2%/}/ and pass its" \
    "s3:// URI (each node reads its own machine's folder)"
}

install_runtime() {
  local requested_compute=$1
  local wheelhouse=$2

  log "step: checking the interpreter (compute=$requested_compute, wheelhouse=${wheelhouse:-none: PyPI})"
  if [[ $MACHINE != "x86_64" && $MACHINE != "aarch64" ]]; then
    fail "this node's machine is '$MACHINE'; EMR 7 nodes are one of ${MACHINES[*]}"
  fi
  choose_system_privilege
  ensure_python
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
  if [[ $compute == "gpu" ]]; then
    refuse_gpu_on "$MACHINE"
    log "step: waiting for the NVIDIA driver"
    wait_for_nvidia_driver
  fi

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

  log "step: checking the system libraries"
  ensure_system_libraries

  log "step: comparing installed packages with the pins"
  local -a requirements
  mapfile -t requirements < <(node_requirements "$compute")
  find_missing "${requirements[@]}"
  if ((${#MISSING[@]} == 0)); then
    log "all ${#requirements[@]} pinned packages already installed; nothing to install"
  else
    local -a to_install=("${MISSING[@]}")
    log "${#to_install[@]} of ${#requirements[@]} pinned packages to install: ${to_install[*]}"
    if [[ -n $wheelhouse ]]; then
      fetch_wheelhouse "$wheelhouse" "$compute" "${to_install[@]}"
    fi
    log "step: installing with pip"
    install_requirements "${requirements[@]}"
    find_missing "${requirements[@]}"
    if ((${#MISSING[@]} > 0)); then
      fail "after pip install these pins are still not installed: ${MISSING[*]}"
    fi
    log "installed ${#to_install[@]} packages: ${to_install[*]}"
  fi

  CUDA_LIBRARY_DIRS=()
  if [[ $compute == "gpu" ]]; then
    log "step: making the CUDA libraries known to the loader"
    configure_cuda_libraries
  fi

  local frameworks="mxnet+onnxruntime" runtime="the $compute runtime"
  if [[ -n $MXNET_REFUSED ]]; then
    frameworks="onnxruntime"
    runtime="the $compute runtime without MXNet (ONNX packages only)"
  fi
  log "step: verifying imports and one forward pass"
  verify_runtime "$compute" "$frameworks" "${CUDA_LIBRARY_DIRS[@]}" ||
    fail "$runtime does not work (the lines above say why)"
  log "done: $runtime is installed and works"
}

main() {
  validate_whole_number MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS "$FIRST_RETRY_DELAY_SECONDS"
  validate_whole_number MXNET_BOOTSTRAP_DEADLINE_SECONDS "$DEADLINE_SECONDS"
  case ${1:-} in
    --print-requirements)
      (($# == 2)) || usage_error "--print-requirements takes one argument (cpu|gpu), got $(($# - 1))"
      validate_compute "$2"
      requirements_for "$2"
      ;;
    --print-cuda-library-dirs)
      (($# == 1)) || usage_error "--print-cuda-library-dirs takes no argument, got $(($# - 1))"
      resolve_python
      cuda_library_dirs
      ;;
    --print-system-libraries)
      (($# == 2)) || usage_error "--print-system-libraries takes one argument (x86_64|aarch64), got $(($# - 1))"
      validate_machine "$2"
      system_libraries_for "$2"
      ;;
    --build-wheelhouse)
      (($# == 3 || $# == 4)) || usage_error "--build-wheelhouse takes two or three arguments" \
        "(cpu|gpu DIRECTORY [x86_64|aarch64]), got $(($# - 1))"
      validate_compute "$2"
      validate_machine "${4:-$DEFAULT_MACHINE}"
      build_wheelhouse "$2" "$3" "${4:-$DEFAULT_MACHINE}"
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
