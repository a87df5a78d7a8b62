"""dvs.json, as the CI step (openshift/release's ipi-conf-vsphere-check-vcm) builds it with
govc: for each network its leases hold, by inventory path, the datacenter of the hosts its
distributed port group reaches and, per cluster of those hosts, the UUID of the distributed
switch the port group belongs to:

    {"/<datacenter>/network/<port group>": {"datacenter": "<name>",
                                            "cluster": {"<cluster name>": "<switch UUID>"}}}

A network that is no distributed port group (a standard or opaque network, or none by that
path) is `{}`, as the step's `govc ls -t DistributedVirtualPortgroup` finding nothing leaves
it. A host outside any cluster stops it, as it stops the step. Read through pyvmomi, one login
per vCenter (client.login: the certificate checked before the login is sent)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http.client import HTTPException
from typing import Any
from xml.parsers.expat import ExpatError

from pyVim.connect import Disconnect
from pyVmomi import vim, vmodl

from ...core.text import shown
from .access import Access, Trust
from .client import VCenterUnavailable, login


class DvsError(Exception):
    """Why dvs.json cannot be written (`vcenter`: the vCenter at fault)."""

    def __init__(self, vcenter: str, message: str) -> None:
        super().__init__(f"vcenter {vcenter}: {message}")
        self.vcenter = vcenter


def _ancestor(obj: Any, kind: type) -> Any:
    node = obj.parent
    while node is not None and not isinstance(node, kind):
        node = node.parent
    return node


def network_entry(content: Any, path: str) -> dict[str, Any]:
    """dvs.json's entry for one network path."""
    pg = content.searchIndex.FindByInventoryPath(path)
    if not isinstance(pg, vim.dvs.DistributedVirtualPortgroup):
        return {}
    uuid = pg.config.distributedVirtualSwitch.uuid
    out: dict[str, Any] = {}
    for host in pg.host:
        cluster = _ancestor(host, vim.ClusterComputeResource)
        datacenter = _ancestor(host, vim.Datacenter)
        if cluster is None or datacenter is None:
            raise ValueError(f"{path}: host {host.name} is in no cluster, or no datacenter")
        out["datacenter"] = datacenter.name
        out.setdefault("cluster", {})[cluster.name] = uuid
    return out


def dvs_json(networks: Iterable[tuple[str, str]], accounts: Mapping[str, tuple[str, str]],
             trust: Trust, *, timeout: float = 30.0) -> dict[str, Any]:
    """dvs.json for (vCenter, network path) pairs, each vCenter logged into with its account
    from `accounts`. DvsError naming the vCenter when one cannot be read."""
    by_vcenter: dict[str, list[str]] = {}
    for vcenter, path in networks:
        paths = by_vcenter.setdefault(vcenter, [])
        if path not in paths:
            paths.append(path)
    out: dict[str, Any] = {}
    for vcenter, paths in by_vcenter.items():
        if vcenter not in accounts:
            raise DvsError(vcenter, "no account for it")
        user, password = accounts[vcenter]
        try:
            si = login(Access(vcenter, user, password, trust), timeout)
        except VCenterUnavailable as exc:
            raise DvsError(vcenter, str(exc)) from None
        try:
            content = si.RetrieveContent()
            for path in paths:
                entry = network_entry(content, path)
                seen = out.setdefault(path, {})
                # merged as the step's jq `*` merges: the clusters of both, the last datacenter
                clusters = {**seen.get("cluster", {}), **entry.get("cluster", {})}
                seen.update(entry)
                if clusters:
                    seen["cluster"] = clusters
        except ValueError as exc:
            raise DvsError(vcenter, str(exc)) from None
        except (vmodl.MethodFault, OSError, HTTPException, ExpatError) as exc:
            # a fault, a connection lost, or an answer that is no SOAP (an error page, a
            # truncated or malformed body)
            raise DvsError(vcenter, f"cannot be read: "
                           f"{shown(getattr(exc, 'msg', '') or exc, 200)}") from None
        finally:
            Disconnect(si)
    return out
