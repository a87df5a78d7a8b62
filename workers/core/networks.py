"""Which networks each lease of a request gets, once its pools are chosen. Pure Python.

Every lease gets `networks` free networks of the request's type, on distinct VLANs (a lease
never holds two networks of one VLAN, e.g. two slices of one multi-tenant VLAN), and no
network goes to two leases (pools of one vCenter and pod share their networks). It is all or
nothing: an answer exists whenever some assignment does.

The common network: one install's failure domains should sit on one subnet. Slot by slot (a
lease's first network, then its second, ...), the candidate VLANs are tried in this order:

1. the VLANs `prefer`red: those that live leases with the request's `boskos-lease-id` hold
   (in the order given: (pod, vlan) ascending);
2. then the VLANs of the pools' free networks, in the pools' order (the order placement chose
   them) and each pool's configuration order.

The first candidate that every pool of the request can take in this slot, with the rest of
the request still placeable, goes to all of them (each pool takes its first free network on
it, in configuration order). When no candidate is common to all the pools, the pools take
one each, in their order: each the first candidate it can take with the rest still placeable,
where the VLANs already taken by the request's earlier pools in this slot come before the
others (so pools that can share one still do). A network with no `vlan` is a VLAN of its own.

"Placeable" is decided exactly: a small maximum flow (pools -> (pool, VLAN) -> networks),
run only when the pools share networks; pools that share none are checked by counting.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

Token = Hashable  # a VLAN: (pod, vlan), or the network's own key when it has no vlan


@dataclass(frozen=True)
class Option:
    """A free network a pool may hand out: its ledger key and its VLAN."""

    key: str
    vlan: Token


def vlan_token(vlan_id: tuple[str, int] | None, key: str) -> Token:
    return ("key", key) if vlan_id is None else vlan_id


def choose_networks(options: Sequence[Sequence[Option]], need: int,
                    prefer: Iterable[Token] = ()) -> list[list[Option]] | None:
    """For each pool (its free networks in configuration order), `need` networks on distinct
    VLANs, no network twice, common VLANs first (see the module's rule); None when no
    assignment exists."""
    pools = len(options)
    if need <= 0:
        return [[] for _ in range(pools)]
    plan = _Plan(options, need)
    order: list[Token] = []
    seen: set[Token] = set()
    for t in prefer:
        if t not in seen:
            seen.add(t)
            order.append(t)
    for opts in options:
        for o in opts:
            if o.vlan not in seen:
                seen.add(o.vlan)
                order.append(o.vlan)
    if not plan.feasible({}):
        return None
    for _ in range(need):
        if not plan.common_slot(order):
            plan.shared_slot(order)
    return plan.chosen


class _Plan:
    """The assignment being built, slot by slot; every step keeps the rest feasible."""

    def __init__(self, options: Sequence[Sequence[Option]], need: int) -> None:
        self.options = options
        self.need = need
        self.chosen: list[list[Option]] = [[] for _ in options]
        self.taken: set[str] = set()
        # pools that share no network can be checked one by one
        keys = [{o.key for o in opts} for opts in options]
        self.disjoint = sum(map(len, keys)) == len(set().union(*keys)) if keys else True

    def open(self, i: int) -> list[Option]:
        """Pool i's networks still open: not taken, on a VLAN the pool does not hold yet."""
        mine = {o.vlan for o in self.chosen[i]}
        return [o for o in self.options[i] if o.key not in self.taken and o.vlan not in mine]

    def _pick(self, i: int, t: Token, forced: dict[int, Token]) -> Option | None:
        """Pool i's first open network on VLAN t that keeps the rest (with `forced`: pools
        that must take a given VLAN in this slot) placeable."""
        for o in self.open(i):
            if o.vlan != t:
                continue
            self.chosen[i].append(o)
            self.taken.add(o.key)
            if self.feasible(forced):
                return o
            self.chosen[i].pop()
            self.taken.discard(o.key)
        return None

    def common_slot(self, order: list[Token]) -> bool:
        """Give every pool the first candidate VLAN all of them can take in this slot."""
        for t in order:
            if not all(any(o.vlan == t for o in self.open(i))
                       for i in range(len(self.options))):
                continue
            picked: list[int] = []
            for i in range(len(self.options)):
                forced = {j: t for j in range(i + 1, len(self.options))}
                if self._pick(i, t, forced) is None:
                    break
                picked.append(i)
            else:
                return True
            for i in picked:  # undo: t is not common after all
                o = self.chosen[i].pop()
                self.taken.discard(o.key)
        return False

    def shared_slot(self, order: list[Token]) -> None:
        """No common VLAN: each pool in turn takes the first candidate it can, the VLANs the
        earlier pools took in this slot first."""
        earlier: list[Token] = []
        for i in range(len(self.options)):
            tried: set[Token] = set()
            for t in [*earlier, *order]:
                if t in tried:
                    continue
                tried.add(t)
                o = self._pick(i, t, {})
                if o is not None:
                    if t not in earlier:
                        earlier.append(t)
                    break
            else:  # pragma: no cover - the rest was feasible, so some candidate fits
                raise AssertionError("no network left for a feasible assignment")

    def feasible(self, forced: dict[int, Token]) -> bool:
        """Whether every pool can still get the rest of its networks: `forced` pools take
        their given VLAN in the current slot, every pool the rest of its `need`."""
        demand = {i: self.need - len(c) for i, c in enumerate(self.chosen)}
        if not any(demand.values()):
            return True
        if self.disjoint:
            for i, left in demand.items():
                if not left:
                    continue
                vlans = {o.vlan for o in self.open(i)}
                if i in forced and forced[i] not in vlans:
                    return False
                if len(vlans) < left:
                    return False
            return True
        return _max_flow_fits(self, demand, forced)


def _max_flow_fits(plan: _Plan, demand: dict[int, int], forced: dict[int, Token]) -> bool:
    """Edmonds-Karp on source -> pool (its demand) -> (pool, VLAN) (1 each: one network of a
    VLAN per lease) -> network (1: one lease per network) -> sink; a forced pool's unit goes
    straight to its (pool, VLAN) node."""
    src, sink = ("src",), ("sink",)
    edges: dict[tuple[Hashable, Hashable], int] = {}
    total = 0
    for i, left in demand.items():
        if not left:
            continue
        total += left
        free_units = left - (1 if i in forced else 0)
        if i in forced:
            edges[(src, ("pv", i, forced[i]))] = 1
        if free_units:
            edges[(src, ("p", i))] = free_units
        for o in plan.open(i):
            if free_units and o.vlan != forced.get(i):
                edges[(("p", i), ("pv", i, o.vlan))] = 1
            edges[(("pv", i, o.vlan), ("n", o.key))] = 1
            edges[(("n", o.key), sink)] = 1
    cap: dict[Hashable, dict[Hashable, int]] = {}
    for (a, b), c in edges.items():
        cap.setdefault(a, {})[b] = c
        cap.setdefault(b, {}).setdefault(a, 0)
    flow = 0
    while flow < total:
        parent: dict[Hashable, Hashable] = {src: src}
        queue = deque([src])
        while queue and sink not in parent:
            node = queue.popleft()
            for nxt, c in cap.get(node, {}).items():
                if c > 0 and nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        if sink not in parent:
            return False
        node = sink
        while node != src:
            prev = parent[node]
            cap[prev][node] -= 1
            cap[node][prev] += 1
            node = prev
        flow += 1
    return True
