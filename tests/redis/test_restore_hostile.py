"""A restore from a damaged or hostile mirror never over-allocates: the placement worker is
started (the documented command) on an empty Redis and a crafted mirror, and driven through
send_task and the CLI. Records whose holdings cannot be read stop placement until dropped;
a mirror whose shape cannot be read is refused, naming the field, until it is fixed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.audit import audit
from tests.support.cli_session import CliSession
from tests.support.helpers import call, check_invariants, failure
from tests.support.procs import ROOT, RedisServer, Stack, Worker, WorkerExited, env_for
from tests.support.restore import (
    ASIDE_POOLS,
    fill_until_refused,
    lease_record,
    port_groups_of,
    stack_on_mirror,
)
from workers.adapters.ledger import Ledger
from workers.adapters.pools_file import load_pools


def on_mirror(tmp_path, kube, snapshot: dict) -> Stack:
    """stack_on_mirror without a queries worker: no test here sends a query task."""
    return stack_on_mirror(tmp_path, kube, snapshot, queries=False)

def _drop(s: Stack, *record_ids: str, cli: CliSession | None = None
          ) -> subprocess.CompletedProcess:
    """`vcm release <id>...`, as the operator drops set-aside records: a real process, or a
    command line of the CLI session `cli`."""
    args = ["release", *record_ids, "--redis-url", s.redis.url]
    if cli is not None:
        return cli.run(*args, env=s.env)
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=s.env,
                          capture_output=True, text=True, timeout=60)


def _pools(s: Stack) -> dict:
    return {p.name: p for p in load_pools(str(s.pools))}


@pytest.mark.parametrize("pool,vcpus,request_,full", [
    ("p1", [10**20], {"vcpus": 1, "memory": 0, "networks": 0}, 10),
    ("removed", [2**62, 2**62], {"vcpus": 0, "memory": 0, "networks": 1}, 6),
], ids=["beyond-int64", "overflowing"])
def test_a_record_holding_absurd_sizes_stops_placement_instead_of_counting_wrong(
        tmp_path, mirror_kind, cli, pool, vcpus, request_, full):
    """Records that otherwise read fine but say they hold more vCPUs than any pool has (beyond
    what the ledger's counters hold, or two that together overflow them) cannot be counted:
    they are set aside and nothing is placed until they are dropped. Counted, the first left
    pool p1 (10 vCPUs) with a negative usage that took any number of grants; the pair (on a
    pool since removed, same vCenter, pg-1 and pg-2) stopped the rebuild half-way, the half
    written was kept as Redis's own, and pg-2 was handed out again."""
    records = [lease_record(f"big-{i}", 1, f"pg-{i + 1}", pool=pool) for i in range(len(vcpus))]
    for record, n in zip(records, vcpus, strict=True):
        record["spec"]["vcpus"] = n
    s = on_mirror(tmp_path, mirror_kind, {"format": 1, "seq": 5, "leases": records})
    try:
        granted, refused = fill_until_refused(s, request_)
        assert granted == [], f"{port_groups_of(granted)} granted past records that hold them"
        assert type(refused).__name__ == "NoCapacity", refused
        assert "big-0" in str(refused) and "vcm release" in str(refused), refused
        ids = [record["metadata"]["name"] for record in records]
        done = _drop(s, *ids, cli=cli)  # one `vcm release` naming them all
        assert done.returncode == 0 and sorted(done.stdout.split()) == sorted(ids), done
        granted, _ = fill_until_refused(s, request_)
        assert len(granted) == full
        check_invariants(Ledger(s.redis.client()), _pools(s))
    finally:
        s.stop()


def test_records_that_together_hold_more_than_the_ledger_counts_stop_placement(tmp_path):
    """Thousands of set-aside records that each hold a readable 10**15 vCPUs on a pool since
    removed (the last one also port group pg-2 of vc1) add up past what a Redis counter
    holds. The rebuild must not stop half-way (a script that fails is not rolled back, and
    the half written was then kept as Redis's own state, pg-2 free to grant again): the
    records past what can be counted hold back all placement until dropped."""
    good = lease_record("good-1", 1, "pg-1")
    hold = {"status": {"pool": "removed", "vcenter": "vc1", "networks": []},
            "spec": {"vcpus": 10**15, "memory": 0, "storage": 0}}
    aside = [{"id": f"huge-{i}", "record": json.dumps(hold), "problem": "no owner"}
             for i in range(9300)]
    last = {**hold, "status": {**hold["status"], "networks": [{"port-group": "pg-2"}]}}
    aside[-1]["record"] = json.dumps(last)
    s = on_mirror(tmp_path, None, {"format": 1, "seq": 5, "leases": [good], "aside": aside})
    try:
        exc = failure(s.app, "vcm.acquire", request={"vcpus": 0, "memory": 0, "networks": 1})
        assert type(exc).__name__ == "NoCapacity", exc
        assert "cannot be read" in str(exc) and "vcm release" in str(exc), exc
        assert "huge-9299" in s.procs[0].output()
        assert call(s.app, "vcm.release", lease_ids=["good-1"]) == ["good-1"]
    finally:
        s.stop()


@pytest.mark.parametrize("networks,asked", [([], 1), (0, 1), (None, 1),
                                            ([{"port-group": "pg-1"}] * 2, 2)],
                         ids=["cut-short", "zero", "null", "duplicated"])
def test_a_record_whose_port_groups_cannot_all_be_read_stops_placement(
        tmp_path, cli, networks, asked):
    """A record that asked for port groups (spec.networks) but whose status.networks names
    fewer of them (empty, not a list, the same one twice) holds a port group nobody can name:
    it is set aside and nothing is placed until it is dropped. Restored as a lease without
    them, its port group pg-1 was handed out again."""
    record = lease_record("short-1", 2, "pg-1")
    record["spec"]["networks"] = asked
    record["status"]["networks"] = networks
    s = on_mirror(tmp_path, None, {"format": 1, "seq": 5, "leases": [record]})
    try:
        exc = failure(s.app, "vcm.acquire", request={"vcpus": 0, "memory": 0, "networks": 1})
        assert type(exc).__name__ == "NoCapacity", exc
        assert "short-1" in str(exc), exc
        done = _drop(s, "short-1", cli=cli)
        assert done.returncode == 0 and done.stdout.split() == ["short-1"], done
        nets, _ = fill_until_refused(s, {"vcpus": 0, "memory": 0, "networks": 1})
        assert port_groups_of(nets) == [f"pg-{j}" for j in range(1, 7)]
        check_invariants(Ledger(s.redis.client()), _pools(s))
    finally:
        s.stop()


def test_two_records_under_one_name_both_stay_held_through_the_journal(tmp_path):
    """The file mirror holds a lease good-1 (2 vCPUs, pg-1) and a damaged record under the
    same name (3 vCPUs, pg-2), plus a journal record after them. Both stay held: the journal
    replay kept only one record per name, so good-1's vCPUs and pg-1 were free again."""
    good = lease_record("good-1", 2, "pg-1")
    bad = lease_record("good-1", 3, "pg-2")
    bad["status"]["owner"] = None
    later = lease_record("later-1", 1, "pg-3")
    (tmp_path / "ledger.json.journal").write_text(
        json.dumps({"seq": 6, "put": [later], "del": []}) + "\n")
    s = on_mirror(tmp_path, None, {"format": 1, "seq": 5, "leases": [good, bad]})
    try:
        cpu, refused = fill_until_refused(s, {"vcpus": 1, "memory": 1, "networks": 0})
        assert len(cpu) == 10 - 2 - 3 - 1, f"{len(cpu)} vCPUs granted"
        nets, _ = fill_until_refused(s, {"vcpus": 0, "memory": 0, "networks": 1})
        assert port_groups_of(nets) == ["pg-4", "pg-5", "pg-6"]
        check_invariants(Ledger(s.redis.client()), _pools(s))
    finally:
        s.stop()


def test_a_journal_record_without_a_readable_name_stays_held(tmp_path):
    """A lease the journal put after the snapshot, whose name cannot be read (3 vCPUs,
    pg-1), is set aside holding what it holds, as the same record in the snapshot is: the
    journal replay left it out, and its vCPUs and pg-1 were free again."""
    unnamed = lease_record("lost-1", 3, "pg-1")
    unnamed["metadata"] = {"name": 7}
    (tmp_path / "ledger.json.journal").write_text(
        json.dumps({"seq": 6, "put": [unnamed], "del": []}) + "\n")
    s = on_mirror(tmp_path, None, {"format": 1, "seq": 5, "leases": []})
    try:
        cpu, _ = fill_until_refused(s, {"vcpus": 1, "memory": 1, "networks": 0})
        assert len(cpu) == 10 - 3
        nets, _ = fill_until_refused(s, {"vcpus": 0, "memory": 0, "networks": 1})
        assert port_groups_of(nets) == ["pg-2", "pg-3", "pg-4", "pg-5", "pg-6"]
        check_invariants(Ledger(s.redis.client()), _pools(s))
    finally:
        s.stop()


def test_a_second_readable_record_under_a_lease_name_is_set_aside_and_can_be_dropped(
        tmp_path, mirror_kind, cli):
    """Two readable records named good-1 (2 vCPUs on pg-1, 3 vCPUs on pg-2): one is the
    lease, the other is set aside holding what it holds, so that releasing the lease and
    dropping the other gives all of pool p1 back. Restored as one lease, one record's
    holdings stayed counted for good with no id to drop them by."""
    first = lease_record("good-1", 2, "pg-1")
    second = lease_record("good-1", 3, "pg-2")
    s = on_mirror(tmp_path, mirror_kind, {"format": 1, "seq": 5, "leases": [first, second]})
    try:
        ledger = Ledger(s.redis.client())
        check_invariants(ledger, _pools(s))
        assert call(s.app, "vcm.release", lease_ids=["good-1"]) == ["good-1"]
        aside = list(audit(ledger)["aside"])
        assert len(aside) == 1, aside
        done = _drop(s, aside[0], cli=cli)
        assert done.returncode == 0, done
        cpu, _ = fill_until_refused(s, {"vcpus": 1, "memory": 1, "networks": 1})
        assert len(cpu) == 6 and port_groups_of(cpu) == [f"pg-{j}" for j in range(1, 7)]
        check_invariants(ledger, _pools(s))
    finally:
        s.stop()


def test_the_journal_drops_only_the_set_aside_record_kept_under_that_id(tmp_path):
    """Two set-aside items carry the id x-1 (pg-1 and pg-2): the rebuild keeps the first
    under x-1 and the second under an id of its own, so the journal's record that x-1 was
    dropped drops only the first; pg-2 stays held."""
    one = {"status": {"pool": "p1", "vcenter": "vc1", "networks": [{"port-group": "pg-1"}]},
           "spec": {"vcpus": 1, "memory": 1, "storage": 0}}
    two = {"status": {"pool": "p1", "vcenter": "vc1", "networks": [{"port-group": "pg-2"}]},
           "spec": {"vcpus": 1, "memory": 1, "storage": 0}}
    aside = [{"id": "x-1", "record": json.dumps(one), "problem": "p"},
             {"id": "x-1", "record": json.dumps(two), "problem": "p"}]
    (tmp_path / "ledger.json.journal").write_text(
        json.dumps({"seq": 6, "put": [], "del": ["x-1"]}) + "\n")
    s = on_mirror(tmp_path, None, {"format": 1, "seq": 5, "leases": [], "aside": aside})
    try:
        nets, _ = fill_until_refused(s, {"vcpus": 0, "memory": 0, "networks": 1})
        assert port_groups_of(nets) == ["pg-1", "pg-3", "pg-4", "pg-5", "pg-6"]
        check_invariants(Ledger(s.redis.client()), _pools(s))
    finally:
        s.stop()


def test_a_set_aside_item_nested_too_deep_to_read_stops_placement_until_dropped(tmp_path):
    """A set-aside item whose record is JSON nested deeper than a parser goes: nobody can
    read what it holds, so nothing is placed until `vcm release deep-1` drops it (it raised
    RecursionError to every client before). The drop runs as a real `vcm` process."""
    deep = "[" * 100000 + "]" * 100000
    s = on_mirror(tmp_path, None, {"format": 1, "seq": 5, "leases": [],
                                   "aside": [{"id": "deep-1", "record": deep, "problem": "?"}]})
    try:
        exc = failure(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})
        assert type(exc).__name__ == "NoCapacity" and "deep-1" in str(exc), exc
        done = _drop(s, "deep-1")
        assert done.returncode == 0 and done.stdout.split() == ["deep-1"], done
        assert port_groups_of(call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})) \
            == ["pg-1"]
    finally:
        s.stop()


def test_a_mirror_without_a_leases_list_restores_what_it_sets_aside(tmp_path):
    """A mirror that holds only set-aside items (no `leases` key at all) is restored without
    an error in the worker's log: the item's port group stays held."""
    held = {"status": {"pool": "p1", "vcenter": "vc1", "networks": [{"port-group": "pg-1"}]},
            "spec": {"vcpus": 1, "memory": 1, "storage": 0}}
    s = on_mirror(tmp_path, None, {"format": 1, "seq": 5, "aside": [
        {"id": "held-1", "record": json.dumps(held), "problem": "no owner"}]})
    try:
        granted = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})
        assert port_groups_of(granted) == ["pg-2"]
        assert "KeyError" not in s.procs[0].output()
        check_invariants(Ledger(s.redis.client()), _pools(s))
    finally:
        s.stop()


GOOD = {"format": 1, "seq": 5, "leases": []}


def _refused_at_start(tmp_path: Path) -> tuple[str, int]:
    """The placement worker started as Stack starts it, on an empty Redis, the pools file and
    the file mirror in tmp_path, which it must refuse: what it said as it exited, and how
    many keys it left in Redis."""
    server = RedisServer().start()
    worker = Worker(env_for(server.url, tmp_path / "pools.yaml",
                            VCM_MIRROR_FILE=str(tmp_path / "ledger.json")), "placement")
    try:
        with pytest.raises(WorkerExited) as exited:
            worker.start()
        return str(exited.value), server.client().dbsize()
    finally:
        worker.kill()
        server.stop()


def _write_mirror(tmp_path: Path, snapshot: dict | str, journal: dict | None) -> dict[str, bytes]:
    """The pools file, and the file mirror (and its journal, if any) as the test crafts them:
    the files in tmp_path by name, with their bytes."""
    (tmp_path / "pools.yaml").write_text(ASIDE_POOLS)
    (tmp_path / "ledger.json").write_text(
        snapshot if isinstance(snapshot, str) else json.dumps(snapshot))
    if journal is not None:
        (tmp_path / "ledger.json.journal").write_text(json.dumps(journal) + "\n")
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


@pytest.mark.parametrize("field,snapshot,journal", [
    ("seq", {**GOOD, "seq": 2**63 - 1}, None),
    ("seq", {**GOOD, "seq": -5}, None),
    ("seq", {**GOOD, "seq": "5x"}, None),
    ("seq", {**GOOD, "seq": float("nan")}, None),
    ("seq", GOOD, {"seq": 2**63 - 1, "put": [], "del": []}),
    ("leases", {**GOOD, "leases": 5}, None),
    ("leases", {**GOOD, "leases": {"a": 1}}, None),
    ("aside", {**GOOD, "aside": 5}, {"seq": 6, "put": [], "del": []}),
    ("aside", {**GOOD, "aside": "x"}, None),
    ("JSON", '{"seq": 5, "leases": [' + "[" * 100000 + "]" * 100000 + "]}", None),
], ids=["seq-huge", "seq-negative", "seq-text", "seq-nan", "journal-seq-huge", "leases-int",
        "leases-map", "aside-int", "aside-text", "nested-too-deep"])
def test_a_mirror_whose_shape_cannot_be_read_is_refused_and_left_as_it_was(
        tmp_path, field, snapshot, journal):
    """The file mirror's seq, leases or set-aside section is not what a ledger writes, and
    Redis holds no ledger: the placement worker stops at start with an error naming the field,
    and nothing is rebuilt from it: Redis holds no key, the mirror's files are as they were and
    no other file was written beside them. Otherwise a seq past Redis's counters would let
    grants commit and then fail (leases kept, nobody told), and a negative one keep every write
    refused for good. (So a refused start leaves the same state whatever the mirror held: an
    empty Redis and the files as written; the next test starts the worker from it once the file
    is fixed.)"""
    files = _write_mirror(tmp_path, snapshot, journal)
    said, keys = _refused_at_start(tmp_path)
    assert "cannot start: MirrorError" in said, said
    assert field in said.split("cannot start: MirrorError", 1)[1], said
    assert keys == 0, f"the refused start left {keys} keys in Redis"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_worker_refused_on_a_damaged_mirror_starts_once_the_mirror_is_fixed(tmp_path):
    """A placement worker refused its start on a mirror it cannot read (a snapshot whose aside
    is not a list, with a journal after it); once the file is fixed (a good snapshot, no
    journal), the worker starts, rebuilds the ledger and serves."""
    _write_mirror(tmp_path, {**GOOD, "aside": 5}, {"seq": 6, "put": [], "del": []})
    said, _ = _refused_at_start(tmp_path)
    assert "cannot start: MirrorError" in said, said
    (tmp_path / "ledger.json").write_text(json.dumps(
        {"format": 1, "seq": 5, "leases": [lease_record("good-1", 2, "pg-1")]}))
    (tmp_path / "ledger.json.journal").unlink()
    s = Stack(tmp_path, ASIDE_POOLS, queries=False)
    try:
        granted = call(s.app, "vcm.acquire", request={"vcpus": 1, "memory": 1})
        assert port_groups_of(granted) == ["pg-2"]
        check_invariants(Ledger(s.redis.client()), _pools(s))
    finally:
        s.stop()


def test_a_configmap_mirror_with_a_seq_past_the_counters_is_refused(tmp_path):
    """The same refusal for the ConfigMap mirror: its seq is past what Redis's counter can
    go on from, so nothing is rebuilt and the placement worker stops at start naming seq."""
    from tests.support.kube_apiserver import KubeApiServer

    with KubeApiServer() as kube:
        with pytest.raises(WorkerExited) as exited:
            on_mirror(tmp_path, kube, {**GOOD, "seq": 2**63 - 1,
                                       "leases": [lease_record("good-1", 2, "pg-1")]})
        assert "cannot start: MirrorError" in str(exited.value), exited.value
        assert "seq" in str(exited.value).split("cannot start: MirrorError", 1)[1]
