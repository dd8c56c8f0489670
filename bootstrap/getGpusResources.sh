#!/usr/bin/env bash
# Spark's GPU discovery script: prints the GPUs this executor's container may use, as the JSON that
# spark.executor.resource.gpu.discoveryScript must print, e.g. {"name": "gpu", "addresses":["0","1"]}.
#
# Derived from Apache Spark's examples/src/main/scripts/getGpusResources.sh (Apache License 2.0): the same nvidia-smi
# query and the same output, written to pass shellcheck and to fail, rather than print no GPU, when nvidia-smi fails.
# EMR puts Spark's copy under /usr/lib/spark/scripts/gpu/ in the guides that also enable the RAPIDS accelerator, and
# documents it nowhere else; this stack does not enable RAPIDS, so it installs its own copy at a path it owns.
#
# Usage:
#   getGpusResources.sh                  what Spark runs in each executor container
#   getGpusResources.sh --install PATH   the EMR bootstrap action: copies this script to PATH (mode 0755), the path
#                                        infra/cluster_definition.py names in GPU_DISCOVERY_SCRIPT
set -euo pipefail

readonly SCRIPT_NAME="getGpusResources.sh"

log() {
  printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$SCRIPT_NAME" "$*" >&2
}

print_gpu_resources() {
  local indices addresses="" index
  # Under YARN's GPU isolation the container's device cgroup lets nvidia-smi see only the GPUs YARN allotted.
  indices=$(nvidia-smi --query-gpu=index --format=csv,noheader)
  while IFS= read -r index; do
    index=${index//[[:space:]]/}
    if [[ -n $index ]]; then
      addresses+="${addresses:+,}\"$index\""
    fi
  done <<<"$indices"
  printf '{"name": "gpu", "addresses":[%s]}\n' "$addresses"
}

install_self() {
  local destination=$1
  if [[ $destination != /* ]]; then
    log "error: --install needs an absolute path, got '$destination'"
    exit 2
  fi
  local -a sudo=()
  if ((EUID != 0)); then
    sudo=(sudo -n) # EMR runs bootstrap actions as `hadoop`, with password-less sudo
  fi
  log "step: installing the GPU discovery script at $destination"
  "${sudo[@]}" mkdir -p "$(dirname "$destination")"
  "${sudo[@]}" install -m 0755 "${BASH_SOURCE[0]}" "$destination"
  log "done: $destination"
}

case $# in
  0) print_gpu_resources ;;
  2)
    if [[ $1 != "--install" ]]; then
      log "error: unknown option '$1'; usage: $SCRIPT_NAME [--install PATH]"
      exit 2
    fi
    install_self "$2"
    ;;
  *)
    log "error: expected no arguments or --install PATH, got $#; usage: $SCRIPT_NAME [--install PATH]"
    exit 2
    ;;
esac
