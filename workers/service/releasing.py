"""Releasing, reaping and renewing leases. A release that frees room serves the waiting line.

A lease id is a capability: release and renew by id work without an owner. When the call
names one, the lease must be held by it (`NotOwner`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ..core.errors import InvalidRequest, LeaseNotFound, LedgerUnready, NotOwner
from ..core.lease import Lease, rfc3339
from ..core.parsing import parse_request, text_arg
from ..ports import Ledger
from ..settings import Settings
from .placing import MAX_ATTEMPTS
from .recovery import Recovery
from .usage_cache import UsageCache

log = logging.getLogger(__name__)
REAP_BATCH = 500


@dataclass(frozen=True)
class Freed:
    """What one release did, its leases read once (the ledger's Released holds them in the
    wire shape)."""

    leases: list[Lease]  # released by this call
    already: list[str]  # ids released earlier
    waiting: int  # requests in the waiting line after it
    set_aside: list[str]  # undecodable records quarantined
    dropped: list[str]  # set-aside records dropped by id (what they held is given back)


class Releasing:
    def __init__(self, ledger: Ledger, settings: Settings, cache: UsageCache,
                 recovery: Recovery) -> None:
        self.ledger = ledger
        self.settings = settings
        self.cache = cache
        self.recovery = recovery

    def release(self, ids: list[str], owner: str | None, reason: str = "released",
                expired_by: float | None = None) -> Freed:
        """Release `ids` (checked against `owner` when given), or every lease of `owner`."""
        for _ in range(2):
            try:
                res = self.ledger.release(ids, owner=owner or "" if ids else "",
                                          by_owner="" if ids else owner or "", reason=reason,
                                          now=rfc3339(time.time()), expired_by=expired_by,
                                          guard=self.recovery.guard)
            except LedgerUnready:
                self.recovery.ensure_ready()
                continue
            match res.status:
                case "notowner":
                    raise NotOwner.of(res.lease_id, str(owner), res.holder)
                case "missing":
                    raise LeaseNotFound.of(res.lease_id)
            if res.set_aside:
                log.error("set aside %d lease records that cannot be decoded (kept in the "
                          "quarantine hash; their usage stays counted): %s",
                          len(res.set_aside), ", ".join(ascii(x) for x in res.set_aside))
            if res.dropped:
                log.warning("dropped %d set-aside records (released by id): %s; what they "
                            "held is given back", len(res.dropped), ", ".join(res.dropped))
            leases = [Lease.from_wire(x) for x in res.leases]
            if res.dropped:  # usage changed in ways the cache cannot follow: read it again
                self.cache.forget()
            else:
                try:
                    self.cache.released(res.old_version, leases)
                except Exception as exc:  # noqa: BLE001 - the release is made: answered so
                    log.warning("the usage cache could not follow a release (%s: %s); it "
                                "reads the ledger again", type(exc).__name__, exc)
                    self.cache.forget()
            self.recovery.record(res.seq, [], [x.id for x in leases] + res.already
                                 + res.dropped, sync=False)
            return Freed(leases, res.already, res.waiting, res.set_aside, res.dropped)
        raise LeaseNotFound.of(ids[0] if ids else str(owner))

    def reap(self) -> list[str]:
        """Release every lease past expires-at with reason `expired`. Each removal re-checks
        expires-at in its script: a lease renewed since it was read stays."""
        reaped: list[str] = []
        while True:
            now = time.time()
            ids = self.ledger.expired(now, limit=REAP_BATCH)
            if not ids:
                break
            res = self.release(ids, None, "expired", expired_by=now)
            reaped.extend(x.id for x in res.leases)
            if len(ids) < REAP_BATCH or not (res.leases or res.set_aside):
                break
        if reaped:
            log.info("reaped %d expired leases: %s", len(reaped), ", ".join(reaped))
        return reaped

    def renew(self, lease_id: Any, owner: Any = None, ttl: Any = None) -> dict[str, Any]:
        lease_id = text_arg(lease_id, "lease_id", max_len=128)
        if owner is not None:  # without one, the lease id is the capability (as for release)
            owner = text_arg(owner, "owner")
        req = parse_request({"vcpus": 1, "memory": 1, **({"ttl": ttl} if ttl is not None else {})},
                            default_ttl=self.settings.lease_ttl,
                            max_ttl=self.settings.max_lease_lifetime)
        for _ in range(MAX_ATTEMPTS):
            record = self.ledger.record(lease_id)
            if record is None:
                if self.ledger.is_gone(lease_id):
                    raise LeaseNotFound(f"lease {lease_id!r} was already released",
                                        {"lease-id": lease_id})
                if not self.ledger.is_ready():
                    self.recovery.ensure_ready()
                    continue
                raise LeaseNotFound.of(lease_id)
            raw, wire = record
            if wire is None:
                raise LeaseNotFound(f"lease {lease_id!r} cannot be read: its record is damaged "
                                    "(the next release or reap sets it aside)",
                                    {"lease-id": lease_id})
            lease = Lease.from_wire(wire)
            if owner is not None and lease.owner != owner:
                raise NotOwner.of(lease_id, owner, lease.owner)
            new = max(lease.expires_epoch, min(time.time() + req.ttl,
                                               lease.leased_epoch
                                               + self.settings.max_lease_lifetime))
            renewed = lease.evolve(expires_at=rfc3339(new)).to_wire()
            try:
                swapped = self.ledger.swap(lease_id, raw, renewed, new, self.recovery.guard)
            except LedgerUnready:
                self.recovery.ensure_ready()
                continue
            if swapped.status == "ok":
                self.recovery.record(swapped.seq, [swapped.raw], [])
                return renewed
        raise LeaseNotFound.of(lease_id)


def parse_lease_ids(value: Any) -> list[str]:
    """The `lease_ids` argument of a release: one id or a list, each valid text."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise InvalidRequest.of("lease_ids", "must be a list of lease id strings")
    if len(value) > 10000:
        raise InvalidRequest.of("lease_ids", "at most 10000 ids at once")
    for x in value:
        text_arg(x, "lease_ids", max_len=128)
    return value
