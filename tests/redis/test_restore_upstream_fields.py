"""A mirror holding leases of both shapes: as written before leases carried upstream's shapes
(no env-vars, pool-info or pool-annotations, no required-pool; failure-domain networks as port
groups, an empty folder) and as written now (a two-pool request with its pool-info, a request
that named its pool), and records whose new fields are of the wrong type or huge. The
placement worker (the documented command) rebuilds an empty Redis from it; each request-id is
answered with its leases as mirrored, and the CLI as a process reads them all."""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import yaml

from tests.support.helpers import call
from tests.support.procs import ROOT
from tests.support.restore import lease_record, stack_on_mirror
from workers.core.grants import make_leases
from workers.core.models import Network, Pool
from workers.core.parsing import parse_request


def before_upstream_shapes(record: dict) -> dict:
    """A lease record as the worker wrote it before leases carried upstream's shapes."""
    old = copy.deepcopy(record)
    st = old["status"]
    for key in ("env-vars", "pool-info", "pool-annotations"):
        st.pop(key, None)
    st["failure-domain"]["topology"].update(
        networks=[n["port-group"] for n in st["networks"]], folder="")
    return old


def two_pool_request() -> list[dict]:
    """The leases of one request on two pools (p1, and p2 since removed), as granted now."""
    pools = [Pool(name, "vc1", "dc", "c1", "ds", vcpus=10, memory=10, storage=100,
                  networks=(Network(pg, vlan=vlan),))
             for name, pg, vlan in (("p1", "pg-5", 5), ("p2", "pg-6", 6))]
    req = parse_request({"vcpus": 1, "memory": 1, "pools": 2, "owner": "job-two",
                         "request-id": "two"}, default_owner="x", default_request_id="two",
                        default_ttl=86400, max_ttl=86400)
    return make_leases(["two-a", "two-b"], req, [(p, list(p.networks)) for p in pools],
                       time.time())


def pinned_request() -> dict:
    """A lease whose request named its pool, a selector and a toleration (its spec keeps
    them: a job step reads `required-pool`)."""
    pool = Pool("p1", "vc1", "dc", "c1", "ds", vcpus=10, memory=10, storage=100,
                networks=(Network("pg-7", vlan=7),))
    req = parse_request({"vcpus": 1, "memory": 1, "owner": "job-pinned", "request-id": "pin",
                         "required-pool": "p1", "pool-selector": {"region": "r1"},
                         "tolerations": [{"key": "k", "operator": "Exists"}]},
                        default_owner="x", default_request_id="pin", default_ttl=86400,
                        max_ttl=86400)
    return make_leases(["pin-a"], req, [(pool, list(pool.networks))], time.time())[0]


def test_leases_of_both_shapes_and_odd_new_fields_restore_and_answer_as_mirrored(tmp_path):
    old = before_upstream_shapes(lease_record("old-1", 1, "pg-1"))
    # written before leases kept what the request named: no required-pool, pool-selector or
    # tolerations
    assert not {"required-pool", "pool-selector", "tolerations"} & set(old["spec"])
    pinned = pinned_request()
    assert pinned["spec"]["required-pool"] == "p1"
    odd = lease_record("odd-1", 1, "pg-2")
    odd["status"].update({"env-vars": {"not": "text"}, "pool-info": "not a list",
                          "pool-annotations": ["x"]})
    odd["spec"].update({"required-pool": ["x"], "pool-selector": "x", "tolerations": 7})
    huge = lease_record("huge-1", 1, "pg-3")
    huge["status"].update({"env-vars": "export A=1\n" * 100_000,
                           "pool-info": [{"name": "x" * 1000}] * 500})
    two = two_pool_request()
    assert two[0]["status"]["pool-info"] == two[1]["status"]["pool-info"] != []
    s = stack_on_mirror(tmp_path, None, {"format": 1, "seq": 5,
                                         "leases": [old, odd, huge, pinned, *two]})
    try:
        for group in ([old], [odd], [huge], [pinned], two):
            st = group[0]["status"]
            again = call(s.app, "vcm.acquire", request={
                "vcpus": 1, "memory": 1, "owner": st["owner"], "request-id": st["request-id"],
                **({"pools": 2} if len(group) > 1 else {})})
            assert sorted(again, key=lambda x: x["metadata"]["name"]) == group
        out = subprocess.run([sys.executable, "-m", "workers.cli", "leases", "-o",
                              "failure-domains", "--redis-url", s.redis.url], cwd=ROOT,
                             env=s.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        domains = yaml.safe_load(out.stdout)["platform"]["vsphere"]["failureDomains"]
        # install-config's networks are port groups, from either shape of record
        assert sorted(n for d in domains for n in d["topology"]["networks"]) == \
            ["pg-1", "pg-2", "pg-3", "pg-5", "pg-6", "pg-7"]
        # and placement goes on beside them, on the one port group of vc1 they leave free
        (fresh,) = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})
        assert fresh["status"]["networks"][0]["port-group"] == "pg-4"
    finally:
        s.stop()
