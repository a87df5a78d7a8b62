"""Lease reads and writes: usage, lookups, and the scripts that change leases (commit,
release, swap)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ...core.lease import (
    Install,
    Lease,
    install_group,
    lease_port_groups,
    parse_rfc3339,
    sharing_install,
)
from ...core.phases import lease_network_type, stat_field
from ...ports import Guard
from .base import LedgerBase
from .records import readable, released_view, text
from .scripts import Commit, Released, Swapped, UsageRead
from .status import LATENCY_BUCKETS

NO_GUARD = Guard()


class LeaseStore(LedgerBase):
    # reads -----------------------------------------------------------------------------
    def usage(self, require_ready: bool = True) -> UsageRead:
        """Version, per-pool usage and used port groups, read atomically. O(pools + networks).
        Raises LedgerUnready if the ledger is not ready and `require_ready`."""
        return UsageRead.from_reply(self.scripts.usage(args=[self.p]), require_ready)

    def seq(self) -> int:
        return int(self.r.get(self.k.seq) or 0)

    def get(self, lease_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.k.leases, lease_id)
        return readable(raw) if raw else None

    def get_many(self, ids: list[str]) -> list[dict[str, Any]]:
        """Active or released leases by id, in order (released ones from their gone record)."""
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.k.leases, ids)
        pipe.hmget(self.k.quarantine, ids)
        for i in ids:
            pipe.hgetall(self.k.gone(i))
        active, aside, *gone = pipe.execute()
        out = []
        for lease_id, raw, odd, g in zip(ids, active, aside, gone, strict=True):
            lease = readable(raw) if raw else None
            if lease is not None:
                out.append(lease)
            elif g:
                out.append(released_view(g))
            else:
                state = "set-aside" if odd else "unknown"
                out.append({"metadata": {"name": lease_id}, "status": {"state": state}})
        return out

    def granted_at(self, request_ids: list[str]) -> tuple[int, list[list[str] | None]]:
        """The usage version, and the lease ids recorded for each request-id (None where it
        is unknown), read in one round trip."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self.k.version)
        pipe.mget([self.k.request(r) for r in request_ids])
        version, raws = pipe.execute()
        return int(version or -1), [json.loads(x) if x else None for x in raws]

    def leases(self, owner: str | None = None) -> list[dict[str, Any]]:
        if owner is not None:
            ids = sorted(text(x) for x in self.r.smembers(self.k.owner(owner)))
            raws = self.r.hmget(self.k.leases, ids) if ids else []
        else:
            raws = self.r.hvals(self.k.leases)
        return [lease for lease in map(readable, filter(None, raws)) if lease is not None]

    def nets_held(self, keys: list[str]) -> set[str]:
        """Which of these networks some lease still holds (after a release: those another
        lease of the same install shares)."""
        if not keys:
            return set()
        return {k for k, v in zip(keys, self.r.hmget(self.k.nets, keys), strict=True)
                if v is not None}

    def net_holders(self, keys: list[str]) -> dict[str, list[str]]:
        """The lease ids (or set-aside record ids) holding each of these networks; a network
        nobody holds is left out."""
        if not keys:
            return {}
        return {k: text(v).split() for k, v in zip(keys, self.r.hmget(self.k.nets, keys),
                                                   strict=True) if v is not None}

    def holdings(self) -> list[tuple[Install, list[str], list[tuple[str, int]]]]:
        """(install, network keys, VLANs) of every live lease that shares its install's
        networks (a boskos-lease-id group's, not network-only: Lease.install): what the
        placement core's Holdings starts from. O(leases)."""
        out = []
        for raw in self.leases():
            lease = Lease.from_wire(raw)
            if lease.install:
                out.append((lease.install, lease.port_groups, lease.vlans))
        return out

    def expired(self, now: float, limit: int = 1000) -> list[str]:
        return [text(x) for x in self.r.zrangebyscore(self.k.expiry, 0, now, 0, limit)]

    def active_at(self, ids: list[str]) -> tuple[int, list[str]]:
        """The ledger seq and the raw JSON of those of `ids` still active, read atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(self.k.seq)
        pipe.hmget(self.k.leases, ids)
        seq, raws = pipe.execute()
        return int(seq or 0), [text(x) for x in raws if x]

    def raw(self, lease_id: str) -> str | None:
        raw = self.r.hget(self.k.leases, lease_id)
        return text(raw) if raw is not None else None

    def record(self, lease_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """An active lease's record as stored (what a swap compares) and decoded (None: it
        cannot be read); None when it is not active."""
        raw = self.raw(lease_id)
        return None if raw is None else (raw, readable(raw))

    def is_gone(self, lease_id: str) -> bool:
        return bool(self.r.exists(self.k.gone(lease_id)))

    # writes ----------------------------------------------------------------------------
    def commit(self, expected_version: int, groups: dict[str, list[dict[str, Any]]],
               caps: dict[str, tuple[int, int, int]], granted: list[str] | None = None,
               latency: float | None = None, lone: bool = False, tasks: list[str] | None = None,
               answer: dict[str, Any] | None = None, held: Iterable[str] = (),
               guard: Guard = NO_GUARD) -> Commit:
        """Record new leases for each request-id, if the ledger is still at expected_version.
        `lone`: placed assuming nobody waits in line; refused ('waiters') if someone does.
        `answer` is recorded as the answer of `tasks` and of the tasks waiting for `granted`;
        a task answered before is refused ('answered', with that answer).
        `held`: the networks the new leases' install holds already (they share them); every
        other network must be free. The leases of one install may share a network; a
        network-only lease shares only with the leases of its own request (the script checks
        both against the holders' records, whatever `held` says). Every write takes the
        writer's `guard` (its floor, and whether to wake the publisher)."""
        pools: dict[str, dict[str, Any]] = {}
        nets: dict[str, list[str]] = {}
        installs: dict[str, str] = {}  # network -> the install of its new holders
        leases = []
        raws: list[str] = []
        fulfilled: dict[str, int] = {}  # stats field -> requests granted of that network type
        for rid, group in groups.items():
            if group:
                field = stat_field("fulfilled", lease_network_type(
                    group[0]["status"].get("networks")))
                fulfilled[field] = fulfilled.get(field, 0) + 1
            for lease in group:
                st, sp, lid = lease["status"], lease["spec"], lease["metadata"]["name"]
                u = pools.setdefault(st["pool"], {
                    "vcpus": 0, "memory": 0, "storage": 0, "leases": 0,
                    "vcenter": st["vcenter"], "cap": list(caps[st["pool"]])})
                u["vcpus"] += sp["vcpus"]
                u["memory"] += sp["memory"]
                u["storage"] += sp["storage"]
                u["leases"] += 1
                group = install_group(st.get("labels"), st.get("boskos-lease-id"))
                if sharing_install(st["owner"], group, sp["vcpus"], sp["memory"]):
                    install = f"{st['owner']!r} group {group!r}"
                else:  # no group, or network-only: the request's leases alone share
                    install = f"request {rid}"
                for key in lease_port_groups(lease):
                    if installs.setdefault(key, install) != install:
                        raise ValueError(f"network {key!r} in new leases of two installs "
                                         f"({installs[key]}, {install})")
                    nets.setdefault(key, []).append(lid)
                raw = json.dumps(lease)
                raws.append(raw)
                leases.append({"id": lid, "owner": st["owner"],
                               "exp": parse_rfc3339(st["expires-at"])})
        payload = {
            "rids": {rid: json.dumps([x["metadata"]["name"] for x in g]) for rid, g in
                     groups.items()},
            "pools": pools, "nets": {key: " ".join(ids) for key, ids in nets.items()},
            "leases": leases, "granted": granted or [], "counts": fulfilled,
        }
        shared = {key: True for key in held if key in nets}
        if shared:
            payload["held"] = shared
        if not granted:
            del payload["granted"]
        if answer is not None and (tasks or granted):
            payload["answer"] = {"tasks": list(tasks or []), "json": json.dumps(answer),
                                 "ttl": self.answer_ttl}
        if lone:
            payload["lone"] = True
        if guard.quiet:
            payload["quiet"] = True
        if guard.floor > 0:
            payload["floor"] = guard.floor
        if latency is not None:
            bucket = next((str(b) for b in LATENCY_BUCKETS if latency <= b), None)
            payload["latency"] = {"seconds": latency, **({"bucket": bucket} if bucket else {})}
        reply = self.scripts.commit(args=[self.p, expected_version, json.dumps(payload), *raws])
        return Commit.from_reply(reply, raws)

    def answered(self, task_id: str) -> dict[str, Any] | None:
        """What a task id was answered (see answer_once), or None."""
        raw = self.r.get(self.k.answered(task_id))
        return json.loads(raw) if raw else None

    def answer_once(self, task_id: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        """Record `answer` as the task id's, unless it has one: then that one is returned (a
        copy of the task was answered first, by this worker or another)."""
        if self.r.set(self.k.answered(task_id), json.dumps(answer), ex=self.answer_ttl,
                      nx=True):
            return None
        return self.answered(task_id) or answer  # (expired in between: it is ours now)

    def release(self, ids: list[str], owner: str = "", by_owner: str = "",
                reason: str = "released", now: str = "",
                expired_by: float | None = None, guard: Guard = NO_GUARD) -> Released:
        """Release leases by id and/or all of an owner's. `expired_by` (reaping): only those
        whose expires-at is still at or before it, checked in the script (a renewal wins).
        Refused (status) when a lease is missing or not `owner`'s; LedgerUnready raised."""
        reply = self.scripts.release(args=[
            self.p, json.dumps(list(ids)) if ids else "[]", owner, by_owner, reason, now,
            self.keep, "1" if guard.quiet else "", guard.floor,
            "" if expired_by is None else repr(expired_by)])
        return Released.from_reply(reply)

    def swap(self, lease_id: str, old_raw: str, new: dict[str, Any], expires: float,
             guard: Guard = NO_GUARD) -> Swapped:
        """Replace a lease if unchanged since it was read as `old_raw`."""
        raw = json.dumps(new)
        reply = self.scripts.swap(args=[self.p, lease_id, old_raw, raw, expires,
                                        "1" if guard.quiet else "", guard.floor])
        return Swapped.from_reply(reply, raw)
