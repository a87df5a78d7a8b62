"""What the operator commands change in the pools configuration: a pool cordoned, uncordoned,
excluded or included, its capacity set, a network added to pools, dropped from them or split
into slices. Each is worked out on the configuration's data and made as edits of its text
(pools_edit), so that nothing else in it changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.text import shown
from .pools_edit import AppendItem, Edit, EditRefused, RemoveItem, SetKey, apply_edits
from .pools_file import read_pools_yaml

CAPACITY = ("vcpus", "memory", "storage", "vcpu-overcommit")


@dataclass
class Change:
    """The edits of one command, and what it says pool by pool (done, or already so)."""

    edits: list[Edit] = field(default_factory=list)
    said: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Listing:
    """One pool's listing of a network: pools[pool].networks[index]."""

    pool: int
    pool_name: str
    index: int
    vcenter: str
    pod: str
    values: dict[str, Any]

    @property
    def network(self) -> tuple[str, str]:
        """Which network of its port group it is: (vCenter, pod)."""
        return self.vcenter, self.pod


class PoolsConfig:
    """The pools configuration's text (from a file or a ConfigMap), and its data."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        data = read_pools_yaml(text, source)
        pools = data.get("pools") if isinstance(data, dict) else None
        if not isinstance(pools, list):
            raise EditRefused("pools", f"{source} has no list of pools to change")
        self.pools: list[Any] = pools

    def names(self) -> list[str]:
        return [_name(p) for p in self.pools]

    def index(self, name: str) -> int:
        for i, pool in enumerate(self.pools):
            if _name(pool) == name:
                return i
        known = ", ".join(shown(n) for n in self.names() if n) or "none"
        raise EditRefused("pool", f"no pool {shown(name)} in {self.source} (pools: {known})")

    def listings(self, port_group: str, pools: list[str] | None = None,
                 vcenter: str | None = None) -> list[Listing]:
        """Where `port_group` is listed: in the pools named (all when None), of `vcenter`."""
        wanted = [self.index(n) for n in pools] if pools else range(len(self.pools))
        out = []
        for i in wanted:
            pool = self.pools[i]
            if not isinstance(pool, dict):
                continue
            pool_vcenter = str(pool.get("vcenter", "")).strip()
            if vcenter is not None and pool_vcenter != vcenter:
                continue
            nets = pool.get("networks")
            for j, net in enumerate(nets if isinstance(nets, list) else []):
                if isinstance(net, dict) and str(net.get("port-group", "")).strip() \
                        == port_group:
                    pod = net.get("pod") or pool.get("pod") or ""
                    out.append(Listing(i, _name(pool), j, pool_vcenter, str(pod).strip(),
                                       net))
        return out

    def sharing(self, i: int) -> list[int]:
        """The pools whose networks are the very list pool `i` has: one list written once
        with a YAML anchor and referred to by aliases. [i] when it shares it with none."""
        nets = self.pools[i].get("networks") if isinstance(self.pools[i], dict) else None
        if not isinstance(nets, list) or not nets:
            return [i]
        return [j for j, p in enumerate(self.pools)
                if isinstance(p, dict) and p.get("networks") is nets]

    def shared_with_all(self, i: int, targets: set[int], what: str) -> list[int]:
        """sharing(i), refused unless every pool of it is one of `targets` (a change of
        that list changes every pool that refers to it)."""
        group = self.sharing(i)
        others = [self.names()[j] for j in group if j not in targets]
        if others:
            raise EditRefused("pool", f"the networks of pool {shown(self.names()[i])} are one "
                              "list with those of pools " + ", ".join(map(shown, others))
                              + f" (a YAML anchor and its aliases): {what} name them all "
                              "(--pool), or edit the file by hand")
        return group

    def apply(self, change: Change) -> str:
        """The text with the change made (the same text when it has no edits)."""
        if not change.edits:
            return self.text
        return apply_edits(self.text, change.edits, self.source)


def _name(pool: Any) -> str:
    name = pool.get("name") if isinstance(pool, dict) else None
    return name.strip() if isinstance(name, str) else ""


def set_flag(config: PoolsConfig, key: str, value: bool, done: str, names: list[str]) -> Change:
    """Set the flag `key` to `value` in the pools named (cordon: no-schedule true); `done` is
    what a pool so set is ("cordoned")."""
    change = Change()
    for name in dict.fromkeys(names):
        i = config.index(name)
        if config.pools[i].get(key, False) is value:
            change.said.append(f"{name}: already {done}")
            continue
        change.edits.append(SetKey(("pools", i), key, value))
        change.said.append(f"{name}: {done}")
    return change


def set_capacity(config: PoolsConfig, name: str, values: dict[str, Any]) -> Change:
    """vcpus, memory, storage and vcpu-overcommit of one pool, those given."""
    if not values:
        raise EditRefused("capacity", "give at least one of --vcpus, --memory, --storage, "
                          "--vcpu-overcommit")
    i = config.index(name)
    pool = config.pools[i]
    change = Change()
    for key, value in values.items():
        before = pool.get(key)
        if before == value and type(before) is type(value):
            change.said.append(f"{name}: {key} already {value}")
            continue
        change.edits.append(SetKey(("pools", i), key, value))
        change.said.append(f"{name}: {key} {before if before is not None else '(unset)'} "
                           f"-> {value}")
    return change


def add_network(config: PoolsConfig, pools: list[str], network: dict[str, Any]) -> Change:
    """The network (port-group and its details) added to each pool named; to a list that
    pools share (a YAML anchor and its aliases) once, when they are all named."""
    if not pools:
        raise EditRefused("pool", "name the pools to add the network to (--pool)")
    port_group = network["port-group"]
    targets = {config.index(name): name for name in pools}
    change = Change()
    done: set[int] = set()
    for i, name in targets.items():
        listed = config.listings(port_group, [name])
        if listed:
            raise EditRefused("port-group", f"pool {shown(name)} lists {shown(port_group)} "
                              f"already (networks[{listed[0].index}]): drop it first to "
                              "change its details")
        if i in done:
            continue
        group = config.shared_with_all(i, set(targets), "to add to it,")
        done.update(group)
        change.edits.append(AppendItem(("pools", group[0]), "networks", network,
                                       shared=len(group) > 1))
        change.said.extend(f"{config.names()[j]}: added {port_group}" for j in group)
    return change


def _listed(config: PoolsConfig, port_group: str, pools: list[str] | None,
            vcenter: str | None) -> list[Listing]:
    """config.listings, refused when there are none."""
    listed = config.listings(port_group, pools, vcenter)
    if not listed:
        where = f"the pools {', '.join(map(shown, pools))}" if pools else config.source
        on = f" of vCenter {shown(vcenter)}" if vcenter is not None else ""
        raise EditRefused("port-group", f"{shown(port_group)} is not listed in {where}{on}")
    return listed


def _one_network(config: PoolsConfig, port_group: str, pools: list[str] | None,
                 vcenter: str | None) -> list[Listing]:
    """The listings of one network of `port_group`: refused when there are none, or when
    the port group names networks of several vCenters or pods and no pool was named."""
    listed = _listed(config, port_group, pools, vcenter)
    networks = {x.network for x in listed}
    if len(networks) > 1 and not pools:
        found = "; ".join(
            f"vCenter {shown(vc)}" + (f" pod {shown(pod)}" if pod else "") + " (pools "
            + ", ".join(shown(x.pool_name) for x in listed if x.network == (vc, pod)) + ")"
            for vc, pod in sorted(networks))
        raise EditRefused("port-group", f"{shown(port_group)} names more than one network: "
                          f"{found}; name the pools (--pool) or the vCenter (--vcenter)")
    return listed


def drop_network(config: PoolsConfig, port_group: str, pools: list[str] | None = None,
                 vcenter: str | None = None) -> Change:
    """The port group dropped from the pools named (every pool that lists it when none is),
    of `vcenter` when given; from a list that pools share once, when it is dropped from them
    all."""
    listed = _listed(config, port_group, pools, vcenter)
    targets = {x.pool for x in listed}
    change = Change()
    done: set[int] = set()
    for x in listed:
        if x.pool in done:
            continue
        group = config.shared_with_all(x.pool, targets, "to drop it from that list,")
        done.update(group)
        change.edits.append(RemoveItem(("pools", group[0]), "networks", x.index,
                                       shared=len(group) > 1))
        change.said.extend(f"{config.names()[j]}: dropped {port_group}" for j in group)
    return change


def split_network(config: PoolsConfig, port_group: str, slices: int,
                  pools: list[str] | None = None, vcenter: str | None = None) -> Change:
    """A multi-tenant network split into `slices` slices, each leased on its own. Pools of
    one vCenter and pod that list the port group share the network, and a listing without
    `slices` takes it from the others: `slices` is written where the network's listings give
    it, or on its first listing when none does."""
    networks = {x.network for x in _one_network(config, port_group, pools, vcenter)}
    every = config.listings(port_group)
    change = Change()
    for network in sorted(networks):
        listed = [x for x in every if x.network == network]
        unique = list({id(x.values): x for x in reversed(listed)}.values())[::-1]
        targets = [x for x in unique if "slices" in x.values] or unique[:1]
        for x in targets:
            users = [y for y in every if y.values is x.values]  # written once, and aliases
            beyond = [y for y in users if y.network not in networks]
            if beyond:
                raise EditRefused("port-group", f"the listing of {shown(port_group)} in pool "
                                  f"{shown(x.pool_name)} is also the one of pool "
                                  f"{shown(beyond[0].pool_name)}, a network of another "
                                  "vCenter or pod (a YAML anchor and its aliases): split "
                                  "both (name both pools), or edit the file by hand")
            names = ", ".join(dict.fromkeys(y.pool_name for y in users))
            if x.values.get("slices") == slices:
                change.said.append(f"{names}: {port_group} already in {slices} slices")
                continue
            change.edits.append(SetKey(("pools", x.pool, "networks", x.index), "slices",
                                       slices, shared=len(users) > 1))
            change.said.append(f"{names}: {port_group} split into {slices} slices")
    return change
