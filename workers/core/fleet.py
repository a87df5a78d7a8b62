"""What placement reads: configured pools, their usage, the port groups in use, and the
FreeNets aggregate that keeps free port groups indexed as leases come and go."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from .lease import Install, key_parts, keys_clash
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


class UsedNets(set[str]):
    """The ledger keys of the networks in use, indexed by family (vCenter and port group) so
    that `is_free` sees every key that clashes with a network (`lease.keys_clash`: the same
    key, a whole network and its slices, overlapping slices, a key of no pod) at the cost of
    a set lookup when nothing else of its family is in use. A set: reads, ==, iteration and
    copies are a set's; add, discard, remove, update and clear keep the index."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        super().__init__()
        self._families: dict[str, set[str]] = {}
        self.update(keys)

    def add(self, key: str) -> None:
        if key not in self:
            super().add(key)
            self._families.setdefault(key_parts(key)[0], set()).add(key)

    def discard(self, key: str) -> None:
        if key in self:
            super().discard(key)
            family = key_parts(key)[0]
            keys = self._families[family]
            keys.discard(key)
            if not keys:
                del self._families[family]

    def remove(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.discard(key)

    def update(self, *others: Iterable[str]) -> None:
        for keys in others:
            for key in keys:
                self.add(key)

    def clear(self) -> None:
        super().clear()
        self._families.clear()

    def __ior__(self, other: Iterable[str]) -> UsedNets:  # type: ignore[override]
        self.update(other)
        return self

    def _reindex(self) -> None:
        self._families = {}
        for key in self:
            self._families.setdefault(key_parts(key)[0], set()).add(key)

    def __reduce__(self):  # a copy (copy.copy, pickle) is a UsedNets with its index
        return (UsedNets, (list(self),))

    def is_free(self, key: str) -> bool:
        """Whether the network of this ledger key may be handed out: no key that clashes
        with it is in use."""
        if key in self:
            return False
        held = self._families.get(key_parts(key)[0])
        return not held or not any(keys_clash(key, k) for k in held)


def _rebuilds_index(name: str) -> Callable[..., object]:
    """One of the other ways a set changes (rare): the set's own, then the index rebuilt."""
    def method(self: UsedNets, *args: object) -> object:
        out = getattr(set, name)(self, *args)
        self._reindex()
        return self if name.startswith("__i") else out
    method.__name__ = name
    return method


for _name in ("pop", "difference_update", "intersection_update",
              "symmetric_difference_update", "__isub__", "__iand__", "__ixor__"):
    setattr(UsedNets, _name, _rebuilds_index(_name))


def used_nets(keys: Iterable[str]) -> UsedNets:
    """`keys` as a UsedNets (itself when it is one: placement changes it in place)."""
    return keys if isinstance(keys, UsedNets) else UsedNets(keys)


class FreeNets:
    """Free port groups per (pool, network type), in configuration order: an aggregate kept
    up to date as port groups are taken and given back, so that placement does not scan the
    port groups in use (their number grows with the leases). A network is free while no key
    in use clashes with its own (`lease.keys_clash`)."""

    def __init__(self, pools: Mapping[str, Pool], used: Iterable[str]) -> None:
        self.pools = pools
        self._where: dict[str, list[tuple[tuple[str, str], int]]] = {}  # key -> (slot, index)
        self._free: dict[tuple[str, str], list[int]] = {}  # slot -> sorted free indices
        self._members: dict[str, list[str]] = {}  # family -> configured keys
        self._held: dict[str, set[str]] = {}  # family -> keys in use (configured families)
        for pool in pools.values():
            for net_type in {n.type for n in pool.networks}:
                for i, (_, key) in enumerate(pool.keyed_networks(net_type)):
                    if key not in self._where:
                        self._members.setdefault(key_parts(key)[0], []).append(key)
                    self._where.setdefault(key, []).append(((pool.name, net_type), i))
        for key in used:
            family = key_parts(key)[0]
            if family in self._members:
                self._held.setdefault(family, set()).add(key)
        for pool in pools.values():
            for net_type in {n.type for n in pool.networks}:
                self._free[(pool.name, net_type)] = [
                    i for i, (_, key) in enumerate(pool.keyed_networks(net_type))
                    if not self._blocked(key)]

    def _blocked(self, key: str) -> bool:
        held = self._held.get(key_parts(key)[0])
        return bool(held) and any(keys_clash(key, k) for k in held)

    def take(self, key: str) -> None:
        family = key_parts(key)[0]
        members = self._members.get(family)
        if members is None:
            return
        self._held.setdefault(family, set()).add(key)
        for member in members:
            if member == key or keys_clash(member, key):
                for slot, i in self._where[member]:
                    free = self._free[slot]
                    j = bisect.bisect_left(free, i)
                    if j < len(free) and free[j] == i:
                        del free[j]

    def give(self, key: str) -> None:
        family = key_parts(key)[0]
        members = self._members.get(family)
        if members is None:
            return
        held = self._held.get(family, set())
        held.discard(key)
        for member in members:
            if (member == key or keys_clash(member, key)) and not self._blocked(member):
                for slot, i in self._where[member]:
                    free = self._free[slot]
                    j = bisect.bisect_left(free, i)
                    if j == len(free) or free[j] != i:
                        free.insert(j, i)

    def count(self, pool: Pool, net_type: str) -> int:
        return len(self._free.get((pool.name, net_type), ()))

    def first(self, pool: Pool, net_type: str, n: int | None = None) -> list[Network]:
        pairs = pool.keyed_networks(net_type)
        return [pairs[i][0] for i in self._free.get((pool.name, net_type), ())[:n]]


VlanId = tuple[str, int]  # (pod, vlan)


@dataclass
class GroupHold:
    """What the live leases of one install (a boskos-lease-id) hold: their networks' keys
    and VLANs, each counted once per lease holding it, and the vCenters they are on."""

    keys: Counter[str] = field(default_factory=Counter)
    vlans: Counter[VlanId] = field(default_factory=Counter)
    vcenters: Counter[str] = field(default_factory=Counter)

    def preferred(self) -> list[VlanId]:
        """Its VLANs, the most held first, then (pod, vlan) ascending."""
        return sorted(self.vlans, key=lambda v: (-self.vlans[v], v))


class Holdings:
    """What each install's live leases hold, by install ((owner, boskos-lease-id): a
    lease.Install; a network-only lease holds for none, lease.sharing_install). `load`, when
    given, reads it from the ledger on first use: (install, network keys, VLANs) per lease
    of a group; until then changes are not tracked (the load will see them in the ledger)."""

    def __init__(self, load: Callable[[], Iterable[tuple[Install, list[str], list[VlanId]]]]
                 | None = None) -> None:
        self._load = load
        self._groups: dict[Install, GroupHold] | None = None if load else {}

    def _all(self) -> dict[Install, GroupHold]:
        if self._groups is None:
            self._groups = {}
            for install, keys, vlans in self._load():  # type: ignore[misc]
                self._change(install, keys, vlans, 1)
        return self._groups

    def of(self, install: Install | None) -> GroupHold | None:
        return self._all().get(install) if install else None

    def add(self, install: Install | None, keys: Iterable[str],
            vlans: Iterable[VlanId]) -> None:
        if install and self._groups is not None:
            self._change(install, keys, vlans, 1)

    def remove(self, install: Install | None, keys: Iterable[str],
               vlans: Iterable[VlanId]) -> None:
        if install and self._groups is not None:
            self._change(install, keys, vlans, -1)

    def _change(self, install: Install, keys: Iterable[str], vlans: Iterable[VlanId],
                step: int) -> None:
        assert self._groups is not None
        hold = self._groups.setdefault(install, GroupHold())
        for key in keys:
            hold.keys[key] += step
            hold.vcenters[key.split("|", 1)[0]] += step
        for vlan in vlans:
            hold.vlans[vlan] += step
        for counter in (hold.keys, hold.vlans, hold.vcenters):
            for k in [k for k, n in counter.items() if n <= 0]:
                del counter[k]
        if not hold.keys and not hold.vlans:
            del self._groups[install]

    def copy(self) -> Holdings:
        out = Holdings()
        out._groups = {g: GroupHold(Counter(h.keys), Counter(h.vlans), Counter(h.vcenters))
                       for g, h in self._all().items()}
        return out


@dataclass
class Fleet:
    """What placement needs to know: configured pools, per-pool usage and used port groups.
    `free`, when given, is the FreeNets aggregate of exactly these pools and used_nets.
    `used_nets` is a UsedNets (a plain set given is wrapped; one given as a UsedNets is used,
    and changed, in place)."""

    pools: Mapping[str, Pool]
    usage: dict[str, Usage] = field(default_factory=dict)
    used_nets: UsedNets = field(default_factory=UsedNets)
    free: FreeNets | None = None
    degraded: Mapping[str, str] = field(default_factory=dict)  # pool -> why (live health)
    holdings: Holdings = field(default_factory=Holdings)  # what each install's leases hold

    def __setattr__(self, name: str, value: object) -> None:
        if name == "used_nets":
            value = used_nets(value)  # type: ignore[arg-type]
        super().__setattr__(name, value)

    def copy(self) -> Fleet:
        return Fleet(self.pools, dict(self.usage), UsedNets(self.used_nets),
                     degraded=self.degraded, holdings=self.holdings.copy())

    def used(self, name: str) -> Usage:
        return self.usage.get(name, NO_USAGE)

    def apply(self, req: Request, placements: Iterable[Placement]) -> None:
        for p in placements:
            self.usage[p.pool.name] = self.used(p.pool.name).plus(req.vcpus, req.memory,
                                                                   req.storage)
            keys = [p.pool.net_key(n) for n in p.networks]
            for key in keys:
                self.used_nets.add(key)
                if self.free is not None:
                    self.free.take(key)
            self.holdings.add(req.install, keys,
                              [n.vlan_id for n in p.networks if n.vlan_id is not None])

    def remove(self, pool: str, vcpus: int, memory: int, storage: int,
               net_keys: Iterable[str]) -> None:
        """The reverse of apply, for one released lease: `net_keys`, the networks it freed
        (not those another lease of its install still holds)."""
        self.usage[pool] = self.used(pool).plus(-vcpus, -memory, -storage, -1)
        for key in net_keys:
            self.used_nets.discard(key)
            if self.free is not None:
                self.free.give(key)

    def is_free(self, key: str) -> bool:
        """Whether the network of this ledger key may be handed out now."""
        return self.used_nets.is_free(key)

    def open_networks(self, pool: Pool, net_type: str, install: Install | None = None,
                      limit: int | None = None) -> list[tuple[Network, bool]]:
        """Networks of this type open to an install, in configuration order (the first
        `limit`), each with whether the install holds it already: free ones, and those its
        live leases hold (they may share them)."""
        hold = self.holdings.of(install)
        if hold is None or pool.vcenter not in hold.vcenters:
            return [(n, False) for n in self.free_networks(pool, net_type, limit)]
        out = []
        for n, key in pool.keyed_networks(net_type):
            if key in hold.keys:
                out.append((n, True))
            elif self.used_nets.is_free(key):
                out.append((n, False))
            if limit is not None and len(out) == limit:
                break
        return out

    def free_networks(self, pool: Pool, net_type: str, limit: int | None = None
                      ) -> list[Network]:
        """Free port groups of this type, in configuration order (the first `limit`)."""
        if self.free is not None:
            return self.free.first(pool, net_type, limit)
        used = self.used_nets
        free = [n for n, key in pool.keyed_networks(net_type) if used.is_free(key)]
        return free[:limit]

    def free_count(self, pool: Pool, net_type: str, install: Install | None = None) -> int:
        """How many networks of this type are open to the install (None: free ones)."""
        hold = self.holdings.of(install)
        if hold is not None and pool.vcenter in hold.vcenters:
            return len(self.open_networks(pool, net_type, install))
        if self.free is not None:
            return self.free.count(pool, net_type)
        used = self.used_nets
        return sum(1 for _, key in pool.keyed_networks(net_type) if used.is_free(key))

    def free_vlans(self, pool: Pool, net_type: str, install: Install | None = None
                   ) -> dict[Hashable, int]:
        """Open networks of this type per VLAN (a network with no vlan is a VLAN of its
        own): a lease takes at most one network of each."""
        out: dict[Hashable, int] = {}
        for n, _ in self.open_networks(pool, net_type, install):
            token = n.vlan_token(pool.vcenter)
            out[token] = out.get(token, 0) + 1
        return out

    def has_free_networks(self, pool: Pool, net_type: str, need: int,
                          install: Install | None = None) -> bool:
        """Whether one lease of the install could take `need` networks of this type now: as
        many open, on distinct VLANs (stops counting at `need`)."""
        if need <= 0:
            return True
        if need > 1:
            return len(self.free_vlans(pool, net_type, install)) >= need
        hold = self.holdings.of(install)
        if hold is not None and pool.vcenter in hold.vcenters:
            return bool(self.open_networks(pool, net_type, install, 1))
        if self.free is not None:
            return self.free.count(pool, net_type) >= need
        used = self.used_nets
        return any(used.is_free(key) for _, key in pool.keyed_networks(net_type))

    def vcenters(self) -> set[str]:
        return {p.vcenter for p in self.pools.values()}
