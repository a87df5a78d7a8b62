"""Small helpers shared by tests: send a task and wait, check ledger invariants, empty the
ledger, roll Redis back."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

from tests.support.audit import audit
from tests.support.procs import ROOT
from workers.adapters.ledger import Ledger
from workers.contract import PLACEMENT, QUEUE
from workers.core.lease import ADOPTED_LABEL
from workers.core.models import DIMENSIONS, Pool

EXAMPLE_POOLS = ROOT / "examples" / "pools.yaml"


def replace_file(path: Path, text: str) -> None:
    """Write `path` whole, as a new file renamed over the old one (what `vcm pools` and a
    mounted ConfigMap do): a worker that re-reads it on change never reads half of it, and
    sees a new inode however quickly the texts follow one another."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def call(app: Celery, name: str, timeout: float = 20, **kwargs: Any) -> Any:
    r = app.send_task(name, kwargs=kwargs, queue=QUEUE.get(name, PLACEMENT))
    return r.get(timeout=timeout)


def placement_barrier(app: Celery, timeout: float = 20) -> None:
    """Returns once the one placement consumer has run every task sent before this call: it
    runs them in the order sent, and a cancel of a wait that does not exist changes nothing."""
    assert call(app, "vcm.cancel_wait", timeout=timeout, task_id="no-such-wait") is False


def failure(app: Celery, name: str, timeout: float = 20, **kwargs: Any) -> BaseException:
    r = app.send_task(name, kwargs=kwargs, queue=QUEUE.get(name, PLACEMENT))
    try:
        r.get(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - the point is to return it
        return exc
    raise AssertionError(f"{name} succeeded but should have failed")


def net_key(vcenter: str, net: dict[str, Any]) -> str:
    """A network's ledger key as documented: vCenter|port group[|pod[|slice]], trailing
    empty parts left out."""
    parts = [vcenter, net["port-group"], net.get("pod") or "", net.get("slice") or ""]
    while parts[-1] == "":
        parts.pop()
    return "|".join(parts)


def check_invariants(ledger: Ledger, pools: dict[str, Pool],
                     shared: frozenset[str] = frozenset()) -> dict[str, Any]:
    """used <= capacity (but for the leases `vcm.adopt` recorded: counted past a pool's
    budget, so only what was granted is held to it), counters == sum of the leases and of
    what set-aside records hold, networks held by exactly their leases and set-aside records,
    each by the leases of one install (an owner's boskos-lease-id label, else one request; a
    network-only lease's by those of its request). A network is never in a lease and a
    set-aside record (unless named in `shared`: the mirror already gave it to both)."""
    snap = audit(ledger)
    sums: dict[str, list[int]] = {}
    adopted: dict[str, list[int]] = {}  # pool -> what its adopted leases hold
    nets: dict[str, set[str]] = {}
    installs: dict[str, tuple] = {}
    for lease_id, lease in snap["leases"].items():
        st, sp = lease["status"], lease["spec"]
        s = sums.setdefault(st["pool"], [0, 0, 0, 0])
        s[0] += sp["vcpus"]
        s[1] += sp["memory"]
        s[2] += sp["storage"]
        s[3] += 1
        if (st.get("labels") or {}).get(ADOPTED_LABEL) == "true":
            a = adopted.setdefault(st["pool"], [0, 0, 0])
            for i, dim in enumerate(DIMENSIONS):
                a[i] += sp[dim]
        group = (st.get("labels") or {}).get("boskos-lease-id") or st.get("boskos-lease-id")
        if not (sp["vcpus"] or sp["memory"]):
            group = None  # network-only: its networks are its request's alone
        install = (st["owner"], group) if group else (st["owner"], None, st.get("request-id"))
        for n in st["networks"]:
            key = net_key(st["vcenter"], n)
            assert installs.setdefault(key, install) == install, \
                f"port group {key} held by two installs ({installs[key]}, {install})"
            nets.setdefault(key, set()).add(lease_id)
    held = {key: set(ids.split()) for key, ids in snap["nets"].items()}
    claims: dict[str, set[str]] = {}
    for aside_id, entry in snap["aside"].items():
        hold = entry.get("hold")
        assert (entry["counted"] == "none") == (aside_id in snap["blocked"]), (aside_id, entry)
        if entry["counted"] != "hold":
            continue
        s = sums.setdefault(hold["pool"], [0, 0, 0, 0])
        for i, dim in enumerate(DIMENSIONS):
            s[i] += hold[dim]
        s[3] += 1
        for key in hold["nets"]:
            claims.setdefault(key, set()).add(aside_id)
    for key, ids in claims.items():
        assert key not in nets or key in shared, \
            f"port group {key} in leases {sorted(nets[key])} and set aside in {sorted(ids)}"
        assert snap["pins"].get(key) in ids, (key, ids, snap["pins"].get(key))
        if key not in nets:
            assert held.get(key) and held[key] <= ids, (key, ids, held.get(key))
            nets[key] = held[key]
    assert set(snap["pins"]) == set(claims), "pinned port groups differ from the set-aside"
    for name, counters in snap["counters"].items():
        assert list(counters) == sums.get(name, [0, 0, 0, 0]), (name, counters, sums.get(name))
        pool = pools.get(name)
        if pool:
            granted = [c - a for c, a in zip(counters, adopted.get(name, [0, 0, 0]),
                                             strict=False)]
            assert granted[0] <= pool.vcpu_capacity, (name, counters, adopted.get(name))
            assert granted[1] <= pool.memory, (name, counters, adopted.get(name))
            assert granted[2] <= pool.storage, (name, counters, adopted.get(name))
    assert set(sums) <= set(snap["counters"])
    # a record a release set aside keeps the port groups its grant took
    committed = {i for i, e in snap["aside"].items() if e["counted"] == "committed"}
    extra = {k: v for k, v in held.items() if k not in nets}
    assert set().union(*extra.values()) <= committed, f"port groups held by nothing: {extra}"
    assert {k: v for k, v in held.items() if k in nets} == nets, \
        "port groups in use differ from the leases"
    return snap


def keep_ledger(client) -> dict[bytes, bytes]:
    """The ledger's keys as they are now (DUMP), to put Redis back to this state later. A key
    can go between SCAN and DUMP (the publisher pops its wake-up list): it is left out."""
    kept = {key: client.dump(key) for key in client.scan_iter("vcm:*")}
    return {key: value for key, value in kept.items() if value is not None}


def go_back(client, kept: dict[bytes, bytes]) -> None:
    """What Redis restarted from an AOF that missed its last second of writes looks like:
    the ledger as it was, still marked ready, with the same epoch."""
    pipe = client.pipeline(transaction=True)
    now = list(client.scan_iter("vcm:*"))
    if now:
        pipe.delete(*now)
    for key, value in kept.items():
        pipe.restore(key, 0, value)
    pipe.execute()


def reset_ledger(client, mirror_file: str | None) -> None:
    """Empty the ledger and its mirror (only vcm:* keys; Celery's own keys stay).

    The keys go and `ready` is set in one transaction: a worker that saw the ledger unready
    in between would restore it from the mirror. The placement worker's publisher may be in
    the middle of a whole save of the old ledger; the empty mirror is written again until no
    such save lands on top of it."""
    keys = list(client.scan_iter("vcm:*", count=1000))
    pipe = client.pipeline(transaction=True)
    if keys:
        pipe.delete(*keys)
    pipe.set("vcm:ready", "0")
    pipe.execute()
    if not mirror_file:
        return
    from workers.adapters.mirror.file import FileMirror

    empty = {"format": 1, "seq": 0, "leases": []}
    for _ in range(20):
        FileMirror(mirror_file).save(empty)
        time.sleep(0.05)
        if not (FileMirror(mirror_file).load() or {}).get("leases"):
            return
    raise AssertionError(f"{mirror_file} keeps being rewritten with the old ledger")
