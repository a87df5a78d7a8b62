"""What placement reads: configured pools, their usage, the port groups in use, and the
FreeNets aggregate that keeps free port groups indexed as leases come and go."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .models import Network, Pool, Request


@dataclass(frozen=True)
class Placement:
    """One pool a decision chose for a request, and the port groups it takes there."""

    pool: Pool
    networks: tuple[Network, ...]


@dataclass(frozen=True)
class Usage:
    vcpus: int = 0
    memory: int = 0
    storage: int = 0
    leases: int = 0

    def plus(self, vcpus: int, memory: int, storage: int, leases: int = 1) -> Usage:
        return Usage(self.vcpus + vcpus, self.memory + memory, self.storage + storage,
                     self.leases + leases)


NO_USAGE = Usage()


class FreeNets:
    """Free port groups per (pool, network type), in configuration order: an aggregate kept
    up to date as port groups are taken and given back, so that placement does not scan the
    port groups in use (their number grows with the leases)."""

    def __init__(self, pools: Mapping[str, Pool], used: set[str]) -> None:
        self.pools = pools
        self._where: dict[str, list[tuple[tuple[str, str], int]]] = {}  # key -> (slot, index)
        self._free: dict[tuple[str, str], list[int]] = {}  # slot -> sorted free indices
        for pool in pools.values():
            for net_type in {n.type for n in pool.networks}:
                slot = (pool.name, net_type)
                free = self._free[slot] = []
                for i, (_, key) in enumerate(pool.keyed_networks(net_type)):
                    self._where.setdefault(key, []).append((slot, i))
                    if key not in used:
                        free.append(i)

    def take(self, key: str) -> None:
        for slot, i in self._where.get(key, ()):
            free = self._free[slot]
            j = bisect.bisect_left(free, i)
            if j < len(free) and free[j] == i:
                del free[j]

    def give(self, key: str) -> None:
        for slot, i in self._where.get(key, ()):
            free = self._free[slot]
            j = bisect.bisect_left(free, i)
            if j == len(free) or free[j] != i:
                free.insert(j, i)

    def count(self, pool: Pool, net_type: str) -> int:
        return len(self._free.get((pool.name, net_type), ()))

    def first(self, pool: Pool, net_type: str, n: int | None = None) -> list[Network]:
        pairs = pool.keyed_networks(net_type)
        return [pairs[i][0] for i in self._free.get((pool.name, net_type), ())[:n]]


@dataclass
class Fleet:
    """What placement needs to know: configured pools, per-pool usage and used port groups.
    `free`, when given, is the FreeNets aggregate of exactly these pools and used_nets."""

    pools: Mapping[str, Pool]
    usage: dict[str, Usage] = field(default_factory=dict)
    used_nets: set[str] = field(default_factory=set)
    free: FreeNets | None = None
    degraded: Mapping[str, str] = field(default_factory=dict)  # pool -> why (live health)

    def copy(self) -> Fleet:
        return Fleet(self.pools, dict(self.usage), set(self.used_nets), degraded=self.degraded)

    def used(self, name: str) -> Usage:
        return self.usage.get(name, NO_USAGE)

    def apply(self, req: Request, placements: Iterable[Placement]) -> None:
        for p in placements:
            self.usage[p.pool.name] = self.used(p.pool.name).plus(req.vcpus, req.memory,
                                                                   req.storage)
            for n in p.networks:
                key = p.pool.net_key(n)
                self.used_nets.add(key)
                if self.free is not None:
                    self.free.take(key)

    def remove(self, pool: str, vcpus: int, memory: int, storage: int,
               net_keys: Iterable[str]) -> None:
        """The reverse of apply, for one released lease."""
        self.usage[pool] = self.used(pool).plus(-vcpus, -memory, -storage, -1)
        for key in net_keys:
            self.used_nets.discard(key)
            if self.free is not None:
                self.free.give(key)

    def free_networks(self, pool: Pool, net_type: str, limit: int | None = None
                      ) -> list[Network]:
        """Free port groups of this type, in configuration order (the first `limit`)."""
        if self.free is not None:
            return self.free.first(pool, net_type, limit)
        used = self.used_nets
        free = [n for n, key in pool.keyed_networks(net_type) if key not in used]
        return free[:limit]

    def free_count(self, pool: Pool, net_type: str) -> int:
        if self.free is not None:
            return self.free.count(pool, net_type)
        used = self.used_nets
        return sum(1 for _, key in pool.keyed_networks(net_type) if key not in used)

    def has_free_networks(self, pool: Pool, net_type: str, need: int) -> bool:
        """Whether `need` port groups of this type are free (stops counting at `need`)."""
        if need <= 0:
            return True
        if self.free is not None:
            return self.free.count(pool, net_type) >= need
        used = self.used_nets
        for _, key in pool.keyed_networks(net_type):
            if key not in used:
                need -= 1
                if need == 0:
                    return True
        return False

    def vcenters(self) -> set[str]:
        return {p.vcenter for p in self.pools.values()}
