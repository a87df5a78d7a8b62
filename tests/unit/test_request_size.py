"""How big the largest request allowed makes its answer and its mirror record. Every lease of a
multi-pool request carries the pool-info of all its pools, so both grow with the square of
`pools`: the limit on `pools` (parsing.MAX_POOLS) is what keeps them within a stated bound."""

from __future__ import annotations

import json
import time

import pytest

from workers.adapters.mirror.codec import encode_json
from workers.core.errors import InvalidRequest
from workers.core.grants import make_leases
from workers.core.models import Pool
from workers.core.parsing import MAX_INT, MAX_POOLS, parse_request
from workers.core.pools import parse_pools

ANSWER_BOUND = 300_000  # bytes of the answer's JSON (the task's result, the HTTP body)
MIRROR_BOUND = 300_000  # bytes of the leases' compact JSON in the mirror (and in Redis)
NETWORKS = 4  # port groups per lease: upstream's CI step asks for at most 4 NICs


def fleet(count: int) -> tuple[Pool, ...]:
    """Pools named as long as CI's, each with NETWORKS port groups."""
    return parse_pools({"pools": [{
        "name": f"ibmcloud-vcs-ci-{i:03d}-workload-cluster-pool",
        "vcenter": f"vcenter-{i % 4}.ci.ibmc.devcluster.openshift.com",
        "datacenter": f"IBMCloud-datacenter-{i}", "cluster": f"vcs-ci-workload-cluster-{i}",
        "datastore": f"vsanDatastore-workload-{i}", "region": "us-east", "zone": f"us-east-{i}",
        "vcpus": 1000, "memory": 4000, "storage": 100000,
        "networks": [{"port-group": f"ci-vlan-{10 * i + j}-portgroup", "vlan": 10 * i + j,
                      "cidr": f"10.{i}.{j}.0/24", "gateway": f"10.{i}.{j}.1"}
                     for j in range(NETWORKS)]} for i in range(count)]})


def granted(count: int) -> list[dict]:
    """The leases of a `pools: count` request, as the placement worker makes them."""
    raw = {"vcpus": 24, "memory": 96, "pools": count, "networks": NETWORKS,
           "owner": "ci-op-abcdef12/vsphere-elastic-42", "request-id": "r" * 128,
           "boskos-lease-id": "vsphere-elastic-42",
           "labels": {"cluster-id": "ci-op-abcdef12-1234"}}
    req = parse_request(raw, max_pools=MAX_INT)
    pools = fleet(count)
    return make_leases([f"{i:020x}" for i in range(count)], req,
                       [(p, list(p.networks)) for p in pools], time.time())


def sizes(count: int) -> tuple[int, int]:
    leases = granted(count)
    mirror, _ = encode_json({"format": 1, "seq": 1, "leases": leases})
    return len(json.dumps(leases).encode()), len(mirror)


def test_the_largest_request_allowed_stays_within_the_bound():
    answer, mirror = sizes(MAX_POOLS)
    assert answer < ANSWER_BOUND, answer
    assert mirror < MIRROR_BOUND, mirror
    with pytest.raises(InvalidRequest):
        parse_request({"vcpus": 24, "memory": 96, "pools": MAX_POOLS + 1})


def test_the_answer_grows_with_the_square_of_pools():
    """Why a limit is needed at all: four times the pools, about sixteen times the bytes
    (the quadratic part dominates), in every answer and every lease record in Redis."""
    small, _ = sizes(MAX_POOLS)
    big, mirror = sizes(4 * MAX_POOLS)
    assert big > 10 * small
    assert big > 2_000_000 and mirror > 2_000_000
