#!/usr/bin/env bash
# The OpenShift CI steps that lease vSphere capacity for one install, as openshift/release's
# ipi-conf-vsphere-check-vcm (acquire) and ipi-deprovision-vsphere-lease (release) do, with
# `vcm` where they run `oc create/wait/get leases`:
#
#   acquire  1. primary leases: one per pool named in POOLS (the cores and memory divided
#               among them), else one lease of POOL_COUNT pools (matching POOL_SELECTOR, on
#               at most VCENTERS vCenters); one network per pool, two with
#               VSPHERE_MULTI_NETWORKS;
#            2. network-only leases when asked: one per word of VSPHERE_EXTRA_LEASED_RESOURCE
#               (or one with MULTI_NIC_IPI), labelled VSPHERE_EXTRA_LEASED_RESOURCE=<i>, and
#               one labelled VSPHERE_BASTION_LEASED_RESOURCE;
#            3. SHARED_DIR's files for the steps after it: LEASE_*/NETWORK_*/POOL_*.json,
#               the *_single.json, subnets.json, platform.json/.yaml, govc.sh and
#               vsphere_context.sh (vcm leases -o lease-files), with the CI step's resource
#               pool: <cluster>/Resources/ipi-ci-clusters, or .../$NAMESPACE-$UNIQUE_HASH
#               for a job whose JOB_NAME_SAFE has "-upi" (POOL_RESOURCE_POOL set: each
#               pool's configured one instead); with DVS_JSON set also dvs.json, read
#               from the vCenters (VCENTER_CA_CERTS: the certificates to trust).
#   release  every lease carrying the install's boskos-lease-id.
#
# Every lease carries the labels boskos-lease-id, job-name and the lease-namespace label; the
# primary ones also cluster-id. Each waits in line up to WAIT for room; a step run again gets
# the same leases (each has its own request-id).
#
# Usage: ci-job-step.sh acquire|release
# Environment, as the CI step's: SHARED_DIR and LEASED_RESOURCE (required), NAMESPACE,
# UNIQUE_HASH, JOB_NAME_SAFE, POOLS, POOL_COUNT (1), POOL_SELECTOR (k=v,k2=v2), VCENTERS (3),
# OPENSHIFT_REQUIRED_CORES (24), OPENSHIFT_REQUIRED_MEMORY (96), NETWORK_TYPE (single-tenant),
# VSPHERE_MULTI_NETWORKS, MULTI_NIC_IPI, VSPHERE_EXTRA_LEASED_RESOURCE,
# VSPHERE_BASTION_LEASED_RESOURCE; and VCENTER_CREDENTIALS (the vCenter accounts file; unset:
# the file each pool's ci-auth-path annotation names), VCENTER_CA_CERTS, DVS_JSON,
# POOL_RESOURCE_POOL, JOB_LINK, WAIT (2h), VCM (vcm).
set -euo pipefail

step=${1:?usage: $0 acquire|release}
: "${LEASED_RESOURCE:?set LEASED_RESOURCE (the Boskos lease)}"
vcm=${VCM:-vcm}
owner=${JOB_NAME_SAFE:-ci-job}
selector="boskos-lease-id=${LEASED_RESOURCE}"
cluster_id="${NAMESPACE:-ci}-${UNIQUE_HASH:-0}"

labels=(--label "boskos-lease-id=${LEASED_RESOURCE}" --label "job-name=${owner}")
if [[ -n "${NAMESPACE:-}" ]]; then
  labels+=(--label "vsphere-capacity-manager.splat-team.io/lease-namespace=${NAMESPACE}")
fi
common=(--owner "$owner" --network-type "${NETWORK_TYPE:-single-tenant}"
        --wait "${WAIT:-2h}" -q "${labels[@]}")
if [[ -n "${JOB_LINK:-}" ]]; then common+=(--job-link "$JOB_LINK"); fi

acquire() {
  : "${SHARED_DIR:?set SHARED_DIR}"
  local cores=${OPENSHIFT_REQUIRED_CORES:-24} memory=${OPENSHIFT_REQUIRED_MEMORY:-96}
  local networks=1 pools i=0
  if [[ -n "${VSPHERE_MULTI_NETWORKS:-}" ]]; then networks=2; fi
  local primary=(--networks "$networks" --label "cluster-id=${cluster_id}" "${common[@]}")
  read -r -a pools <<< "${POOLS:-}"

  if (( ${#pools[@]} > 0 )); then
    # one lease per named pool, the install's cores and memory spread evenly over them
    for pool in "${pools[@]}"; do
      "$vcm" acquire --vcpus $((cores / ${#pools[@]})) --memory $((memory / ${#pools[@]})) \
        --required-pool "$pool" --request-id "${LEASED_RESOURCE}-primary-${i}" \
        "${primary[@]}" -o json > /dev/null
      i=$((i + 1))
    done
  else
    # one lease of POOL_COUNT pools, wherever they fit, on at most VCENTERS vCenters
    local count=${POOL_COUNT:-1} select=()
    if ! [[ "$count" =~ ^[1-9][0-9]{0,3}$ ]]; then
      echo "POOL_COUNT: must be a number from 1 to 9999, not '${count}'" >&2
      exit 2
    fi
    if [[ -n "${POOL_SELECTOR:-}" ]]; then
      IFS=, read -r -a pairs <<< "$POOL_SELECTOR"
      for pair in "${pairs[@]}"; do select+=(--selector "$pair"); done
    fi
    "$vcm" acquire --vcpus $((cores / count)) --memory $((memory / count)) \
      --pools "$count" --vcenters "${VCENTERS:-3}" "${select[@]}" \
      --request-id "${LEASED_RESOURCE}-primary" "${primary[@]}" -o json > /dev/null
  fi

  # network-only leases: a port group each, no vCPUs or memory
  local extras=${VSPHERE_EXTRA_LEASED_RESOURCE:-}
  if [[ -n "${MULTI_NIC_IPI:-}" && -z "$extras" ]]; then extras=1; fi
  i=1
  for _ in $extras; do
    "$vcm" acquire --vcpus 0 --memory 0 --networks 1 \
      --label "VSPHERE_EXTRA_LEASED_RESOURCE=${i}" \
      --request-id "${LEASED_RESOURCE}-extra-${i}" "${common[@]}" -o json > /dev/null
    i=$((i + 1))
  done
  if [[ -n "${VSPHERE_BASTION_LEASED_RESOURCE:-}" ]]; then
    "$vcm" acquire --vcpus 0 --memory 0 --networks 1 \
      --label "VSPHERE_BASTION_LEASED_RESOURCE=${VSPHERE_BASTION_LEASED_RESOURCE}" \
      --request-id "${LEASED_RESOURCE}-bastion" "${common[@]}" -o json > /dev/null
  fi

  local files=(-o lease-files "$SHARED_DIR")
  if [[ -n "${VCENTER_CREDENTIALS:-}" ]]; then files+=(--credentials "$VCENTER_CREDENTIALS"); fi
  if [[ -n "${MULTI_NIC_IPI:-}" ]]; then files+=(--multi-nic); fi
  if [[ -n "${VCENTER_CA_CERTS:-}" ]]; then files+=(--ca-certs "$VCENTER_CA_CERTS"); fi
  if [[ -n "${DVS_JSON:-}" ]]; then files+=(--dvs); fi
  if [[ -n "${POOL_RESOURCE_POOL:-}" ]]; then
    files+=(--pool-resource-pool)
  elif [[ "$owner" =~ -upi ]]; then
    files+=(--resource-pool "$cluster_id")
  fi
  "$vcm" leases -l "$selector" --owner "$owner" "${files[@]}"
  "$vcm" leases -l "$selector" --owner "$owner" -o table
}

case "$step" in
  acquire) acquire ;;
  release) "$vcm" release -l "$selector" --owner "$owner" -o json ;;
  *)
    echo "usage: $0 acquire|release" >&2
    exit 2
    ;;
esac
