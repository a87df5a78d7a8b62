"""Adopting: recording in the ledger what a lease granted elsewhere (upstream's controller,
before a cut-over) already holds, under its own request-id, so that nothing moves and nobody
else is given what it holds.

`vcm.adopt` gets the request of the Lease (as the controller makes it for an acquire) and its
holdings: the pools it holds (by name: a pool's name or its `Pool` object's name) and the
networks it holds (port group and pod, as its `Network` objects say). Each network goes to
every held pool that lists it (port group and pod, as upstream's controller matches them);
each pool gets the request's vCPUs, memory and storage (upstream's per-pool sizes). The
leases are made as a grant makes them and recorded by the same commit script as a grant
(commit.lua): atomic, all or nothing, the request-id recorded with them, a network taken only
when free or held by the same install. Their capacity is counted even past a pool's budget
(the job runs there already; the pool takes no new grant until it fits again).

Answers: the adopted leases (labelled `vsphere-capacity-manager.splat-team.io/adopted=true`);
a request-id recorded before (adopted before, or granted by an acquire): its leases, as an
acquire answers them (an error naming those that are gone); refused, with nothing recorded:
InvalidRequest naming the field for a pool or port group the configuration lacks, or
holdings that cannot be read; NoCapacity naming the port group and its holders for a network
another install holds (or one that clashes with it: a whole network and its slices, a key of
no pod), and when the request waits in line."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..core.errors import InvalidRequest, LedgerUnready, NoCapacity
from ..core.fleet import UsedNets
from ..core.grants import make_leases
from ..core.lease import ADOPTED_LABEL, keys_clash
from ..core.models import Network, Pool, Request
from ..core.parsing import MAX_INT, parse_request
from ..core.text import MAX_TEXT, text_problem
from ..core.upstream import pool_object_name
from ..ports import Ledger, Pools
from ..settings import Settings
from .placing import MAX_ATTEMPTS, Placing
from .recovery import Recovery
from .usage_cache import UsageCache

log = logging.getLogger(__name__)

MAX_HELD_POOLS = 64  # more pools than any lease holds
MAX_HELD_NETWORKS = 256
UNCAPPED = 10**15  # an adopted lease's pool budget: counted whatever the pool holds already
Grants = list[tuple[Pool, list[Network]]]


class Adopting:
    def __init__(self, ledger: Ledger, pools: Pools, settings: Settings, cache: UsageCache,
                 recovery: Recovery, placing: Placing) -> None:
        self.ledger = ledger
        self.pools = pools
        self.settings = settings
        self.cache = cache
        self.recovery = recovery
        self.placing = placing

    def adopt(self, raw: Any, holdings: Any) -> list[dict[str, Any]]:
        """The leases recording `holdings` for the request `raw` (see the module's
        docstring). The caller holds the service's lock."""
        req = self._request(raw)
        version, found = self.ledger.granted_at([req.key])
        if found[0] is not None:  # adopted before, or granted: answered as it was
            return self.placing.answer_with([req.request_id], [found[0]])[0]
        grants = self._grants(req, holdings)
        for _ in range(MAX_ATTEMPTS):
            if self.ledger.is_waiting(req.key):
                raise NoCapacity.of({}, f"request-id {req.request_id!r} waits in line for a "
                                    "grant: cancel its wait first")
            try:
                version, _, nets = self.ledger.usage()
            except LedgerUnready:
                self.recovery.ensure_ready()
                continue
            keys = sorted({pool.net_key(n) for pool, nets_ in grants for n in nets_})
            used = UsedNets(nets)
            shared = [k for k in keys if k in used]  # the commit takes them only within one
            clash = next((k for k in keys if k not in used and not used.is_free(k)), None)
            if clash is not None:
                others = [k for k in used if keys_clash(clash, k)]
                raise self._conflict(clash, others)
            now = time.time()
            leases = make_leases([uuid.uuid4().hex[:20] for _ in grants], req, grants, now)
            caps = {pool.name: (UNCAPPED, UNCAPPED, UNCAPPED) for pool, _ in grants}
            try:
                commit = self.ledger.commit(version, {req.key: leases}, caps, held=shared,
                                            guard=self.recovery.guard)
            except LedgerUnready:
                self.recovery.ensure_ready()
                continue
            match commit.status:
                case "ok":
                    self.cache.forget()
                    self.recovery.record(commit.seq, commit.raws, [])
                    log.info("adopted request-id %s of %s: %s", req.request_id, req.owner,
                             "; ".join(_held_text(x) for x in leases))
                    return leases
                case "dup":
                    return self.placing.answer_with([req.request_id],
                                                    [commit.existing[req.key]])[0]
                case "over" if commit.detail in keys:
                    raise self._conflict(commit.detail, [commit.detail])
                case "conflict":
                    raise InvalidRequest.of("request-id", f"{req.request_id!r} was already "
                                            "used by another request of this owner")
                case "queued":
                    continue  # said at the top of the next attempt
                case "blocked":
                    raise self.placing._blocked(commit.detail)
                case _:  # stale: the ledger moved since the read
                    log.info("adoption: ledger moved under us (%s %s), re-reading",
                             commit.status, commit.detail)
        raise NoCapacity.of({}, f"the ledger kept changing; gave up after {MAX_ATTEMPTS} tries")

    def _request(self, raw: Any) -> Request:
        if not isinstance(raw, dict):
            raise InvalidRequest.of("request", "must be an object")
        labels = raw.get("labels")
        labels = dict(labels) if isinstance(labels, Mapping) else {}
        raw = {**raw, "labels": {**labels, ADOPTED_LABEL: "true"}}
        s = self.settings
        req = parse_request(raw, default_ttl=s.lease_ttl, max_ttl=s.max_lease_lifetime,
                            max_wait=MAX_INT, max_pools=MAX_INT)
        if not req.request_id:
            raise InvalidRequest.of("request-id", "an adoption needs the request-id its "
                                    "leases are recorded under")
        return req

    def _grants(self, req: Request, holdings: Any) -> Grants:
        """(pool, networks) per held pool, from the configuration; refused naming the field
        of what it lacks."""
        if not isinstance(holdings, Mapping):
            raise InvalidRequest.of("holdings", "must be an object with pools and networks")
        if holdings.get("problem") is not None:  # the sender could not tell what it holds
            raise InvalidRequest.of("holdings", str(holdings["problem"])[:MAX_TEXT])
        names, nets = holdings.get("pools"), holdings.get("networks", [])
        if not isinstance(names, list) or not names:
            raise InvalidRequest.of("holdings.pools", "must name at least one pool it holds")
        if len(names) > MAX_HELD_POOLS:
            raise InvalidRequest.of("holdings.pools", f"at most {MAX_HELD_POOLS} pools")
        if not isinstance(nets, list) or len(nets) > MAX_HELD_NETWORKS:
            raise InvalidRequest.of("holdings.networks", "must be a list of at most "
                                    f"{MAX_HELD_NETWORKS} networks")
        configured = self.pools.current()
        by_name = {pool_object_name(p.name): p for p in configured.values()}
        by_name.update(configured)  # a pool's own name first
        chosen: list[Pool] = []
        for i, name in enumerate(names):
            _text(name, f"holdings.pools[{i}]")
            pool = by_name.get(name)
            if pool is None:
                raise InvalidRequest.of(f"holdings.pools[{i}]", f"pool {name!r} is not in "
                                        "the pools configuration")
            if pool not in chosen:
                chosen.append(pool)
        grants: Grants = [(p, []) for p in chosen]
        for j, entry in enumerate(nets):
            field = f"holdings.networks[{j}]"
            if not isinstance(entry, Mapping):
                raise InvalidRequest.of(field, "must be an object with port-group and pod")
            port_group = _text(entry.get("port-group"), f"{field}.port-group")
            pod = entry.get("pod") or ""
            if pod:
                _text(pod, f"{field}.pod")
            named = f"port group {port_group!r}" + (f" of pod {pod!r}" if pod else "")
            found = False
            for pool, held in grants:
                for net in pool.networks:
                    if net.port_group != port_group or (pod and net.pod != pod):
                        continue
                    if net.slices:
                        raise InvalidRequest.of(field, f"{named} is split into slices in the "
                                                "pools configuration: which slice it holds "
                                                "cannot be told")
                    if net not in held:
                        held.append(net)
                    found = True
            if not found:
                pools = ", ".join(repr(p.name) for p in chosen)
                raise InvalidRequest.of(field, f"{named} is on none of the pools it holds "
                                        f"({pools}) in the pools configuration")
        for pool, held in grants:
            if len(held) < req.networks:
                raise InvalidRequest.of("holdings.networks", f"pool {pool.name!r} holds "
                                        f"{len(held)} of the {req.networks} port groups its "
                                        "request asks for on each pool")
        return grants

    def _conflict(self, key: str, clashing: list[str]) -> NoCapacity:
        """A held network that is leased to someone else, naming who."""
        holders = self.ledger.net_holders(clashing)
        ids = sorted({i for ids in holders.values() for i in ids})
        named = []
        for lease in self.ledger.get_many(ids[:5]) if ids else []:
            st = lease.get("status") or {}
            who = st.get("owner") or st.get("state") or "unknown"
            named.append(f"{lease['metadata']['name']} of {who}")
        if len(ids) > 5:
            named.append(f"{len(ids) - 5} more")
        by = ", ".join(named) or "a lease being released"
        return NoCapacity(f"port group {key} is leased to {by}",
                          {"reasons": {}, "port-group": key, "holders": ids})


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest.of(field, "must be a non-empty string")
    problem = text_problem(value, MAX_TEXT)
    if problem:
        raise InvalidRequest.of(field, problem)
    return value


def _held_text(lease: Mapping[str, Any]) -> str:
    st, sp = lease["status"], lease["spec"]
    nets = ", ".join(n["port-group"] for n in st.get("networks") or []) or "no port group"
    return (f"{lease['metadata']['name']} on {st['pool']} ({sp['vcpus']} vCPUs, "
            f"{sp['memory']} GB memory, {sp['storage']} GB storage; {nets})")
