"""Which networks each lease of a request gets, once its pools are chosen. Pure Python.

A network is held by one install at a time: one request, or the requests of one owner that
carry the same `boskos-lease-id` (its leases may share a network: two failure domains of one
vCenter on one port group). So each lease takes from the networks open to its install (free,
or held by the install already), independently of the request's other leases but for the
common network:

- every lease gets `networks` networks on distinct VLANs (never two networks of one VLAN,
  e.g. two slices of one multi-tenant VLAN); a network with no `vlan` is a VLAN of its own;
- slot by slot (a lease's first network, then its second, ...) the candidate VLANs are, in
  order: the VLANs `prefer`red (those the install's live leases hold: most held first, then
  (pod, vlan) ascending), then the VLANs of the pools' open networks in the order the pools
  were chosen and each pool's configuration order;
- the first candidate that every lease can still take goes to all of them (one subnet for the
  install); when there is none, the leases take one each in turn, each the first candidate it
  can, the VLANs the earlier leases took in this slot first (so those that can share still do);
- on the VLAN chosen, a lease takes a network its install holds already, else the first open
  one in configuration order.

A network-only request (no vCPUs, no memory: an install's extra NICs, its bastion) is an
install of its own whatever its `boskos-lease-id` (lease.sharing_install): only free networks
are open to it and nothing is `prefer`red, and its networks are no install's to share or
prefer later. Its own leases (one request over several pools) still follow the rule above.

It is all or nothing: the answer is None exactly when some lease has fewer open VLANs than
`networks` (each slot uses up one VLAN of each lease, so any lease with enough can finish).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

Token = Hashable  # a VLAN: (pod, vlan); for a network with no vlan, the network (models)


@dataclass(frozen=True)
class Option:
    """A network open to a lease: its ledger key, its VLAN, and whether its install holds it
    already (another of the install's leases does)."""

    key: str
    vlan: Token
    held: bool = False


def candidate_order(options: Sequence[Sequence[Option]], prefer: Iterable[Token] = ()
                    ) -> list[Token]:
    """The candidate VLANs: `prefer` first, then the leases' open VLANs as they come."""
    order: list[Token] = []
    seen: set[Token] = set()
    for t in [*prefer, *(o.vlan for opts in options for o in opts)]:
        if t not in seen:
            seen.add(t)
            order.append(t)
    return order


def choose_networks(options: Sequence[Sequence[Option]], need: int,
                    prefer: Iterable[Token] = ()) -> list[list[Option]] | None:
    """For each lease (the networks open to it, in configuration order), `need` networks on
    distinct VLANs, common VLANs first (see the module's rule); None when a lease has fewer
    than `need` open VLANs."""
    if need <= 0:
        return [[] for _ in options]
    if any(len({o.vlan for o in opts}) < need for opts in options):
        return None
    order = candidate_order(options, prefer)
    chosen: list[list[Option]] = [[] for _ in options]
    pick: list[dict[Token, Option]] = []  # per lease: its network on each VLAN it offers
    for opts in options:
        mine: dict[Token, Option] = {}
        for o in opts:  # the first listed, unless a later one is held (and it is not)
            if o.vlan not in mine or (o.held and not mine[o.vlan].held):
                mine[o.vlan] = o
        pick.append(mine)

    def on(i: int, t: Token) -> Option | None:
        """Lease i's network on VLAN t (one its install holds first), unless it has t."""
        o = pick[i].get(t)
        return None if o is None or any(x.vlan == t for x in chosen[i]) else o

    for _ in range(need):
        for t in order:
            picks = []
            for i in range(len(options)):
                o = on(i, t)
                if o is None:
                    break
                picks.append(o)
            else:
                for i, o in enumerate(picks):
                    chosen[i].append(o)
                break
        else:
            earlier: list[Token] = []
            for i in range(len(options)):
                for t in [*earlier, *order]:
                    o = on(i, t)
                    if o is not None:
                        chosen[i].append(o)
                        if t not in earlier:
                            earlier.append(t)
                        break
    return chosen
