#!/usr/bin/env bash
# EMR bootstrap action for compute=gpu on EMR 7.x: mounts the cgroup v1 `devices` controller that YARN's GPU isolation
# needs, because Amazon Linux 2023 boots with cgroup v2 only and YARN's GPU module isolates devices through v1.
#
# Source: Amazon EMR Release Guide, "Use the Nvidia RAPIDS Accelerator for Apache Spark", section "Add a bootstrap
# action for your cluster", Amazon EMR 7.x: "To use YARN to manage GPU resources with Amazon EMR 7.x releases, you
# must manually mount CGroup v1 on your cluster." The three commands below are the ones the guide gives; what this
# script adds is logging and being safe to run twice.
#
# The path is not free: the same guide's yarn-site and container-executor configurations must point at it, and the
# stack sets them (yarn.nodemanager.linux-container-executor.cgroups.mount-path = /spark-rapids-cgroup,
# container-executor cgroups root = /spark-rapids-cgroup, yarn-hierarchy = yarn).
#
# Usage: configure-gpu-cgroups.sh   (no arguments; runs on every node, GPU or not, as the guide's script does)
set -euo pipefail

readonly SCRIPT_NAME="configure-gpu-cgroups.sh"
readonly CGROUP_ROOT="/spark-rapids-cgroup"
readonly DEVICES_MOUNT="$CGROUP_ROOT/devices"
# The mount's source name in /proc/mounts, as in the guide.
readonly MOUNT_SOURCE="cgroupv1-devices"

log() {
  printf '%s %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$SCRIPT_NAME" "$*" >&2
}

# EMR runs bootstrap actions as `hadoop` with password-less sudo; -n fails at once rather than waiting for a password.
as_root() {
  if ((EUID == 0)); then
    "$@"
  else
    sudo -n "$@"
  fi
}

devices_controller_mounted() {
  # Field 2 is the mount point, field 3 the type, field 4 the options (which name the controller).
  awk -v target="$DEVICES_MOUNT" \
    '$2 == target && $3 == "cgroup" && $4 ~ /(^|,)devices(,|$)/ { found = 1 } END { exit !found }' /proc/mounts
}

main() {
  if (($# != 0)); then
    log "error: expected no arguments, got $#: $*"
    exit 2
  fi

  log "step: creating $DEVICES_MOUNT"
  as_root mkdir -p "$DEVICES_MOUNT"

  if devices_controller_mounted; then
    log "step: cgroup v1 devices controller already mounted at $DEVICES_MOUNT; not mounting again"
  else
    log "step: mounting the cgroup v1 devices controller at $DEVICES_MOUNT"
    as_root mount -t cgroup -o devices "$MOUNT_SOURCE" "$DEVICES_MOUNT"
  fi

  # YARN's container-executor creates its `yarn` hierarchy under this root and the NodeManager writes device rules
  # into it; the guide opens it to all users for that.
  log "step: opening $CGROUP_ROOT to YARN (chmod a+rwx -R)"
  as_root chmod a+rwx -R "$CGROUP_ROOT"

  if ! devices_controller_mounted; then
    log "error: $DEVICES_MOUNT is not a cgroup devices mount after mounting; YARN GPU isolation would fail to start"
    exit 1
  fi
  log "done: cgroup v1 devices controller ready at $DEVICES_MOUNT"
}

main "$@"
