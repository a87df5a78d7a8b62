"""Records that a restore sets aside: a small pool, leases as the worker grants them, a stack
whose placement worker starts on an empty Redis and a crafted mirror (a file or a ConfigMap)."""

from __future__ import annotations

import json
import time

import yaml

from tests.support.helpers import call
from tests.support.procs import Stack
from workers.core.grants import make_lease
from workers.core.models import Network, Pool
from workers.core.parsing import parse_request

ASIDE_POOLS = yaml.safe_dump({"pools": [
    {"name": "p1", "vcenter": "vc1", "datacenter": "dc", "cluster": "c1", "datastore": "ds",
     "vcpus": 10, "memory": 10, "storage": 100,
     "networks": [{"port-group": f"pg-{j}", "vlan": j} for j in range(1, 7)]}]})


def lease_record(name: str, vcpus: int, port_group: str, pool: str = "p1",
                 owner: str | None = None, labels: dict[str, str] | None = None) -> dict:
    """A lease as the worker grants it, on vCenter vc1 (vcpus 0: network-only)."""
    p = Pool(pool, "vc1", "dc", "c1", "ds", vcpus=10, memory=10, storage=100,
             networks=(Network(port_group, vlan=1),))
    req = parse_request({"vcpus": vcpus, "memory": vcpus, "owner": owner or f"job-{name}",
                         "request-id": name, "labels": labels or {}}, default_owner="x",
                        default_request_id=name, default_ttl=86400, max_ttl=86400)
    return make_lease(name, req, p, list(p.networks), time.time())


def fill_until_refused(s: Stack, request: dict, most: int = 20) -> tuple[list[dict], Exception]:
    """Acquire `request` until it is refused: the leases granted, and the refusal."""
    granted = []
    for i in range(most):
        try:
            granted += call(s.app, "vcm.acquire", request={**request, "owner": f"fill-{i}"})
        except Exception as exc:  # noqa: BLE001 - the refusal is what the caller checks
            return granted, exc
    raise AssertionError(f"{most} grants of {request} and no refusal: capacity over-allocated")


def port_groups_of(leases: list[dict]) -> list[str]:
    return sorted(n["port-group"] for x in leases for n in x["status"]["networks"])


def stack_on_mirror(tmp_path, kube, snapshot: dict, queries: bool = True) -> Stack:
    """A stack whose placement worker starts (the documented command) on an empty Redis and
    a mirror holding `snapshot` (without a queries worker for a test that sends no query)."""
    if kube is None:
        (tmp_path / "ledger.json").write_text(json.dumps(snapshot))
        return Stack(tmp_path, ASIDE_POOLS, queries=queries)
    from workers.adapters.mirror.configmap import ConfigMapMirror

    with ConfigMapMirror("vcm-test", "ledger", api_client=kube.api_client()) as cm:
        cm.save(snapshot)
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="vcm-test")
    return Stack(tmp_path, ASIDE_POOLS, queries=queries, VCM_CONFIGMAP="vcm-test/ledger",
                 KUBECONFIG=str(kubeconfig))
