#!/usr/bin/env bash
# The OpenShift CI step that leases vSphere capacity through Lease custom resources, making
# the API calls upstream's step (ipi-conf-vsphere-check-vcm) makes, with kubectl as `oc`:
#   acquire: create the Leases (generateName "<boskos lease id>-", the step's labels): one per
#     pool named in POOLS, cores and memory divided among them, or one unpinned Lease; a
#     network-only Lease per extra NIC and one for a bastion. Wait for their status to appear,
#     then for phase Fulfilled (failing at once when one is Failed). Read each Lease, the
#     Networks it owns and its Pool (status.name) as JSON; write LEASE_<name>.json,
#     LEASE_single.json (the Lease with vCPUs), NETWORK_<name>.json, NETWORK_single.json,
#     POOL_<name>.json, subnets.json (by router, then VLAN), platform.json and platform.yaml
#     (install-config's vcenters and failureDomains), govc.sh and vsphere_context.sh (the
#     envVars of LEASE_single, whose GOVC_URL must not be empty; then the file paths,
#     GOVC_INSECURE, the resource pool <computeCluster>/Resources/ipi-ci-clusters, or
#     .../$NAMESPACE-$UNIQUE_HASH for a -upi job, cloud_where_run and the vCenter's account).
#   release: delete the Leases of the boskos lease id (the controller releases them).
#
# Usage: crd-job-step.sh acquire|release SHARED_DIR
# Environment: LEASED_RESOURCE (the boskos lease id, required), NAMESPACE (the CI namespace),
# JOB_NAME_SAFE, UNIQUE_HASH, POOLS ("pool-a pool-b"), OPENSHIFT_REQUIRED_CORES (24),
# OPENSHIFT_REQUIRED_MEMORY (96), NETWORK_TYPE (single-tenant), VSPHERE_MULTI_NETWORKS (two
# networks per primary Lease), VSPHERE_EXTRA_LEASED_RESOURCE ("1 2": one NIC each),
# VSPHERE_BASTION_LEASED_RESOURCE (the bastion's pool), LEASE_NAMESPACE
# (vsphere-infra-helpers), OC (oc, else kubectl), KUBECONFIG, STATUS_TRIES (5) and
# STATUS_WAIT (15 s) for the status to appear, FULFILLED_TIMEOUT (7200 s), POLL (5 s).
set -euo pipefail

step=${1:?usage: $0 acquire|release SHARED_DIR}
shared=${2:?usage: $0 acquire|release SHARED_DIR}
: "${LEASED_RESOURCE:?set LEASED_RESOURCE (the boskos lease id)}"
oc=${OC:-$(command -v oc || command -v kubectl)}
ns=${LEASE_NAMESPACE:-vsphere-infra-helpers}
selector="boskos-lease-id=${LEASED_RESOURCE}"
job=${JOB_NAME_SAFE:-ci-job}
network_type=${NETWORK_TYPE:-single-tenant}

log() { echo "$(date -u --rfc-3339=seconds) - $*" >&2; }
kc() { "$oc" -n "$ns" "$@"; }

# one Lease, from its spec lines (YAML) and extra label lines
create_lease() {
  local spec=$1 labels=${2:-}
  kc create -o name -f - <<EOF
apiVersion: vspherecapacitymanager.splat.io/v1
kind: Lease
metadata:
  generateName: "${LEASED_RESOURCE}-"
  namespace: "${ns}"
  annotations: {}
  labels:
    vsphere-capacity-manager.splat-team.io/lease-namespace: "${NAMESPACE:-}"
    boskos-lease-id: "${LEASED_RESOURCE}"
    job-name: "${job}"
${labels}
spec:
${spec}
EOF
}

# JSON (stdin) as block YAML, indented by $1 spaces (install-config's platform.vsphere)
to_yaml() {
  jq -r --argjson indent "${1:-0}" '
    def scalar: if type == "string" then tojson else tostring end;
    def lines(pad):
      if type == "object" then
        to_entries[] | .key as $k | .value |
          if (type == "object" or type == "array") and length > 0
          then "\(pad)\($k):", lines(pad + "  ")
          else "\(pad)\($k): \(if type == "object" then "{}" elif type == "array" then "[]"
                                 else scalar end)" end
      elif type == "array" then
        .[] | if (type == "object" or type == "array") and length > 0
              then ([lines(pad + "  ")] | .[0] |= "\(pad)- " + .[(pad | length) + 2:])[]
              else "\(pad)- \(scalar)" end
      else "\(pad)\(scalar)" end;
    lines(" " * $indent)'
}

acquire() {
  mkdir -p "$shared"
  local primary_networks=1 cores=${OPENSHIFT_REQUIRED_CORES:-24}
  local memory=${OPENSHIFT_REQUIRED_MEMORY:-96}
  [[ -n "${VSPHERE_MULTI_NETWORKS:-}" ]] && primary_networks=2
  local i=1 extra
  for extra in ${VSPHERE_EXTRA_LEASED_RESOURCE:-}; do
    log "creating extra leased resource ${extra}"
    create_lease "  vcpus: 0
  memory: 0
  network-type: \"${network_type}\"
  networks: 1" "    VSPHERE_EXTRA_LEASED_RESOURCE: \"${i}\""
    i=$((i + 1))
  done
  if [[ -n "${VSPHERE_BASTION_LEASED_RESOURCE:-}" ]]; then
    log "creating bastion lease on ${VSPHERE_BASTION_LEASED_RESOURCE}"
    create_lease "  vcpus: 0
  memory: 0
  network-type: \"${network_type}\"
  required-pool: \"${VSPHERE_BASTION_LEASED_RESOURCE}\"
  networks: 1" "    VSPHERE_BASTION_LEASED_RESOURCE: \"${VSPHERE_BASTION_LEASED_RESOURCE}\""
  fi
  local -a pools
  read -r -a pools <<< "${POOLS:-}"
  if [[ ${#pools[@]} -eq 0 ]]; then
    pools=(unspecified)
  else  # spread the install over the pools named
    cores=$((cores / ${#pools[@]}))
    memory=$((memory / ${#pools[@]}))
  fi
  local pool required
  for pool in "${pools[@]}"; do
    required=""
    [[ "$pool" != unspecified ]] && required="  required-pool: \"${pool}\""
    log "creating lease for pool ${pool}"
    create_lease "  vcpus: ${cores}
  memory: ${memory}
  network-type: \"${network_type}\"
${required}
  networks: ${primary_networks}" "    cluster-id: \"${NAMESPACE:-ci}-${UNIQUE_HASH:-0}\""
  done

  log "waiting for the leases' status"
  local n=0
  until kc get leases -l "$selector" -o json | jq -e '.items | length > 0
      and all(.status != null)' > /dev/null; do
    n=$((n + 1))
    if [[ $n -ge ${STATUS_TRIES:-5} ]]; then
      log "status was never available for the leases"
      kc get leases -l "$selector" -o yaml >&2
      return 1
    fi
    sleep "${STATUS_WAIT:-15}"
  done
  log "waiting for the leases to be fulfilled"
  local deadline=$((SECONDS + ${FULFILLED_TIMEOUT:-7200})) phases
  while true; do
    phases=$(kc get leases -l "$selector" -o json)
    if jq -e 'any(.items[]; .status.phase == "Failed")' <<< "$phases" > /dev/null; then
      log "a lease failed:"
      jq -r '.items[] | select(.status.phase == "Failed") | "\(.metadata.name): " +
        ([.status.conditions[]? | select(.type == "Fulfilled") | "\(.reason): \(.message)"]
         | join("; "))' <<< "$phases" >&2
      return 1
    fi
    jq -e 'all(.items[]; .status.phase == "Fulfilled")' <<< "$phases" > /dev/null && break
    if [[ $SECONDS -ge $deadline ]]; then
      log "the leases were not fulfilled in time"
      return 1
    fi
    sleep "${POLL:-5}"
  done

  local -A portgroups=()
  local lease network path portgroup
  for lease in $(kc get leases -l "$selector" -o jsonpath='{.items[*].metadata.name}'); do
    kc get leases "$lease" -o json > "$shared/LEASE_${lease}.json"
    path=$(jq -r '.status.topology.networks[0]' "$shared/LEASE_${lease}.json")
    portgroup=${path##*/}
    for network in $(jq -r '.metadata.ownerReferences[]? | select(.kind == "Network")
        | .name' "$shared/LEASE_${lease}.json"); do
      [[ -f "$shared/NETWORK_${network}.json" ]] || \
        kc get networks "$network" -o json > "$shared/NETWORK_${network}.json"
      # subnets.json: by primary router, then VLAN: the Network's spec and what steps read
      jq '{(.spec.primaryRouterHostname // ""): {(.spec.vlanId): (.spec + {
            dnsServer: .spec.gateway, mask: .spec.netmask,
            StartIPv6Address: .spec.startIPv6Address, CidrIPv6: .spec.cidrIPv6})}}' \
        "$shared/NETWORK_${network}.json" > "$shared/subnets.part.json"
      if [[ -f "$shared/subnets.json" ]]; then
        jq -s '.[0] * .[1]' "$shared/subnets.json" "$shared/subnets.part.json" \
          > "$shared/subnets.tmp.json"
        mv "$shared/subnets.tmp.json" "$shared/subnets.json"
      else
        cp "$shared/subnets.part.json" "$shared/subnets.json"
      fi
      rm -f "$shared/subnets.part.json"
    done
    if jq -e '.metadata.labels.VSPHERE_BASTION_LEASED_RESOURCE' \
        "$shared/LEASE_${lease}.json" > /dev/null; then
      echo "export vsphere_bastion_portgroup=\"${portgroup}\"" >> "$shared/vsphere_context.extra"
    elif jq -e '.metadata.labels.VSPHERE_EXTRA_LEASED_RESOURCE' \
        "$shared/LEASE_${lease}.json" > /dev/null; then
      extra=$(jq -r '.metadata.labels.VSPHERE_EXTRA_LEASED_RESOURCE' \
        "$shared/LEASE_${lease}.json")
      echo "export vsphere_extra_portgroup_${extra}=\"${portgroup}\"" \
        >> "$shared/vsphere_context.extra"
    else
      portgroups[$(jq -r '.status.server' "$shared/LEASE_${lease}.json")]=$portgroup
    fi
  done

  local platform='{"vcenters": [], "failureDomains": []}' file name server datacenter
  local user password auth resource_pool
  local -A users=() passwords=()
  for file in "$shared"/LEASE_*.json; do
    [[ "$file" == */LEASE_single.json ]] && continue
    name=$(jq -r '.status.name' "$file")
    if jq -e '.spec.vcpus != null' "$file" > /dev/null; then
      cp "$file" "$shared/LEASE_single.json"
    fi
    kc get pools "$name" -o json > "$shared/POOL_${name}.json"
    server=$(jq -r '.spec.server' "$shared/POOL_${name}.json")
    datacenter=$(jq -r '.spec.topology.datacenter' "$shared/POOL_${name}.json")
    # one account per vCenter, picked at its first lease: platform.json and govc.sh name it
    if [[ -z "${users[$server]+picked}" ]]; then
      user="" password=""
      auth=$(jq -r '.metadata.annotations["ci-auth-path"] // ""' "$shared/POOL_${name}.json")
      if [[ -n "$auth" && -r "$auth" ]]; then
        local -a vcenter_usernames=() vcenter_passwords=()
        # shellcheck source=/dev/null
        source "$auth"
        if [[ ${#vcenter_usernames[@]} -gt 0 ]]; then
          local pick=$((RANDOM % ${#vcenter_usernames[@]}))
          user=${vcenter_usernames[$pick]} password=${vcenter_passwords[$pick]:-}
        fi
      fi
      users[$server]=$user passwords[$server]=$password
    fi
    user=${users[$server]} password=${passwords[$server]}
    # the resource pool below the cluster's root one: the job's own for UPI, else the IPI
    # installs' (vcm leases -o lease-files: --resource-pool, default ipi-ci-clusters)
    if [[ "${job}" =~ -upi ]]; then
      resource_pool="$(jq -r '.spec.topology.computeCluster' "$shared/POOL_${name}.json")/Resources/${NAMESPACE:-ci}-${UNIQUE_HASH:-0}"
    else
      resource_pool="$(jq -r '.spec.topology.computeCluster' "$shared/POOL_${name}.json")/Resources/ipi-ci-clusters"
    fi
    platform=$(jq --slurpfile pool "$shared/POOL_${name}.json" \
      --arg network "${portgroups[$server]:-}" --arg rp "$resource_pool" \
      --arg user "$user" --arg password "$password" --arg dc "$datacenter" '
      $pool[0] as $p
      | if any(.failureDomains[]; .name == $p.spec.name) then . else
          .failureDomains += [{server: $p.spec.server, name: $p.spec.name,
            zone: $p.spec.zone, region: $p.spec.region,
            topology: {resourcePool: $rp, computeCluster: $p.spec.topology.computeCluster,
                       datacenter: $dc, datastore: $p.spec.topology.datastore,
                       networks: [$network]}}] end
      | if any(.vcenters[]; .server == $p.spec.server)
        then (.vcenters[] | select(.server == $p.spec.server) | .datacenters)
             |= (if index($dc) then . else . + [$dc] end)
        else .vcenters += [{server: $p.spec.server, user: $user, password: $password,
                            datacenters: [$dc]}] end' <<< "$platform")
  done
  echo "$platform" > "$shared/platform.json"
  to_yaml 4 < "$shared/platform.json" > "$shared/platform.yaml"

  network=$(jq -r '[.metadata.ownerReferences[]? | select(.kind == "Network")][0].name' \
    "$shared/LEASE_single.json")
  cp "$shared/NETWORK_${network}.json" "$shared/NETWORK_single.json"
  name=$(jq -r '.status.name' "$shared/LEASE_single.json")
  if [[ "${job}" =~ -upi ]]; then
    resource_pool="$(jq -r '.spec.topology.computeCluster' "$shared/POOL_${name}.json")/Resources/${NAMESPACE:-ci}-${UNIQUE_HASH:-0}"
  else
    resource_pool="$(jq -r '.spec.topology.computeCluster' "$shared/POOL_${name}.json")/Resources/ipi-ci-clusters"
  fi
  jq -r '.status.envVars' "$shared/LEASE_single.json" > "$shared/envvars"
  # shellcheck source=/dev/null
  source "$shared/envvars"
  if [[ -z "${GOVC_URL:-}" ]]; then
    log "the lease's envVars give no GOVC_URL"
    return 1
  fi
  {
    cat "$shared/envvars"
    echo "export LEASE_PATH=${shared}/LEASE_single.json"
    echo "export NETWORK_PATH=${shared}/NETWORK_single.json"
    echo "export GOVC_INSECURE=1"
    printf 'export vsphere_resource_pool=%q\n' "$resource_pool"
    printf 'export GOVC_RESOURCE_POOL=%q\n' "$resource_pool"
    echo "export cloud_where_run=IBM"
    printf 'export GOVC_USERNAME=%q\n' "${users[$GOVC_URL]:-}"
    printf 'export GOVC_PASSWORD=%q\n' "${passwords[$GOVC_URL]:-}"
  } > "$shared/govc.sh"
  chmod 600 "$shared/govc.sh"
  cp "$shared/govc.sh" "$shared/vsphere_context.sh"
  if [[ -f "$shared/vsphere_context.extra" ]]; then
    cat "$shared/vsphere_context.extra" >> "$shared/vsphere_context.sh"
    rm -f "$shared/vsphere_context.extra"
  fi
  rm -f "$shared/envvars"
  log "leased: $(kc get leases -l "$selector" -o jsonpath='{.items[*].metadata.name}')"
}

case "$step" in
  acquire) acquire ;;
  release) kc delete leases -l "$selector" --timeout=10m ;;
  *) echo "usage: $0 acquire|release SHARED_DIR" >&2; exit 2 ;;
esac
