#!/usr/bin/env bash
# A CI job step for an OpenShift install on vSphere, with nothing but `vcm`:
#   1. lease capacity: a primary lease on each of POOLS pools, an extra network-only lease
#      (a second NIC) and a network-only bastion lease pinned to BASTION_POOL, all labelled
#      with one boskos-lease-id and waiting in line up to WAIT for room;
#   2. write install-config's platform.vsphere failure domains and a subnets file;
#   3. (at deprovision) release everything carrying the boskos-lease-id.
#
# Usage: ci-job-step.sh acquire|release OUT_DIR
# Environment: BOSKOS_LEASE_ID (required), JOB_NAME, NAMESPACE, POOLS (default 2),
# VCENTERS (default: as many as POOLS), VCPUS (24), MEMORY (96), STORAGE (0),
# NETWORK_TYPE (single-tenant), BASTION_POOL (optional), WAIT (2h), JOB_LINK, VCM (vcm).
set -euo pipefail

step=${1:?usage: $0 acquire|release OUT_DIR}
out=${2:?usage: $0 acquire|release OUT_DIR}
: "${BOSKOS_LEASE_ID:?set BOSKOS_LEASE_ID}"
vcm=${VCM:-vcm}
owner=${JOB_NAME:-ci-job}
selector="boskos-lease-id=${BOSKOS_LEASE_ID}"
labels=(--label "boskos-lease-id=${BOSKOS_LEASE_ID}" --label "job-name=${owner}")
if [[ -n "${NAMESPACE:-}" ]]; then
  labels+=(--label "vsphere-capacity-manager.splat-team.io/lease-namespace=${NAMESPACE}")
fi
common=(--owner "$owner" --network-type "${NETWORK_TYPE:-single-tenant}"
        --wait "${WAIT:-2h}" "${labels[@]}" -q)
if [[ -n "${JOB_LINK:-}" ]]; then common+=(--job-link "$JOB_LINK"); fi

case "$step" in
  acquire)
    mkdir -p "$out"
    pools=${POOLS:-2}
    # the primary leases: all of them or none, spread over the vCenters
    $vcm acquire --vcpus "${VCPUS:-24}" --memory "${MEMORY:-96}" --storage "${STORAGE:-0}" \
      --pools "$pools" --vcenters "${VCENTERS:-$pools}" --request-id "${BOSKOS_LEASE_ID}-primary" \
      "${common[@]}" -o json > "$out/primary.json"
    # a second NIC: a network-only lease
    $vcm acquire --vcpus 0 --memory 0 --networks 1 --request-id "${BOSKOS_LEASE_ID}-nic" \
      "${common[@]}" -o json > "$out/nic.json"
    if [[ -n "${BASTION_POOL:-}" ]]; then
      $vcm acquire --vcpus 0 --memory 0 --networks 1 --required-pool "$BASTION_POOL" \
        --request-id "${BOSKOS_LEASE_ID}-bastion" "${common[@]}" -o json > "$out/bastion.json"
    fi
    $vcm leases -l "$selector" -o failure-domains > "$out/platform-vsphere.yaml"
    $vcm leases -l "$selector" -o subnets > "$out/subnets.json"
    $vcm leases -l "$selector" -o table
    ;;
  release)
    $vcm release -l "$selector" -o json > "$out/released.json"
    ;;
  *)
    echo "usage: $0 acquire|release OUT_DIR" >&2
    exit 2
    ;;
esac
