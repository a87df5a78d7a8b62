"""vCenter inventory (pyvmomi): check that pools name real objects and fit the real hardware.

`VCenterInventory` reads, per datacenter, the clusters (CPU, memory), datastores (capacity, free
space) and networks (port groups) of one vCenter, with one PropertyCollector call each.
`check_pools` compares the pools with their vCenters and returns findings:
errors for names that do not exist or a vCenter that cannot be read, warnings for budgets
larger than the hardware. Budgets are in GB = 2**30 bytes, as vSphere shows them.

Every login goes through `login`, with the credential and certificate check of
access.py: a certificate that is not trusted stops the connection before the login
is sent.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any, Literal

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from workers.core.models import Pool
from workers.core.text import shown

from .access import CA_HINT, Access, AccessPlan, ThumbprintMismatch, address

log = logging.getLogger(__name__)

GIB = 1 << 30
HAVE_MAX = 10  # names listed in "(have: …)"


@dataclass(frozen=True)
class ClusterInfo:
    name: str
    cpu_mhz: int  # Σ cores × MHz
    cpu_cores: int
    cpu_threads: int  # logical CPUs: what vCPUs are scheduled on
    memory_bytes: int
    hosts: int


@dataclass(frozen=True)
class DatastoreInfo:
    name: str
    capacity_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class DatacenterInfo:
    name: str
    clusters: Mapping[str, ClusterInfo]
    datastores: Mapping[str, DatastoreInfo]
    networks: frozenset[str]  # standard networks, distributed and opaque port groups


@dataclass(frozen=True)
class Finding:
    pool: str  # for a vCenter that cannot be read: every pool on it, comma-separated
    field: str  # pools-file field, e.g. "datastore", "networks[0].port-group"
    severity: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


class VCenterUnavailable(Exception):
    """A vCenter that cannot be reached or logged into; the message says which and why."""


class VCenterInventory:
    """A logged-in session on one vCenter; datacenters are read on first use and cached."""

    def __init__(self, si: vim.ServiceInstance, name: str) -> None:
        self.name = name
        self._si = si
        self._content = si.RetrieveContent()
        self._datacenters: dict[str, vim.Datacenter] | None = None
        self._cache: dict[str, DatacenterInfo] = {}

    @classmethod
    def connect(cls, access: Access, *, timeout: float = 30.0) -> VCenterInventory:
        """Log in (see `login`). Raises VCenterUnavailable for an unreachable vCenter, an
        untrusted certificate or rejected credentials."""
        return cls(login(access, timeout), access.vcenter)

    def close(self) -> None:
        Disconnect(self._si)  # best effort: never raises

    def __enter__(self) -> VCenterInventory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def datacenters(self) -> list[str]:
        if self._datacenters is None:
            rows = self._collect(self._content.rootFolder, {vim.Datacenter: ["name"]})
            self._datacenters = {props["name"]: obj for obj, props in rows}
        return sorted(self._datacenters)

    def datacenter(self, name: str) -> DatacenterInfo | None:
        """Clusters, datastores and networks of a datacenter; None if there is none by that name."""
        if name not in self._cache:
            self.datacenters()
            assert self._datacenters is not None
            dc = self._datacenters.get(name)
            if dc is None:
                return None
            self._cache[name] = self._read(dc, name)
        return self._cache[name]

    def _read(self, dc: vim.Datacenter, name: str) -> DatacenterInfo:
        rows = self._collect(dc, {
            vim.ClusterComputeResource: ["name", "summary"],
            vim.Datastore: ["name", "summary.capacity", "summary.freeSpace"],
            vim.Network: ["name"],
        })
        clusters: dict[str, ClusterInfo] = {}
        datastores: dict[str, DatastoreInfo] = {}
        networks: set[str] = set()
        for obj, props in rows:
            if isinstance(obj, vim.ClusterComputeResource):
                s = props["summary"]
                clusters[props["name"]] = ClusterInfo(
                    props["name"], s.totalCpu or 0, s.numCpuCores or 0, s.numCpuThreads or 0,
                    s.totalMemory or 0, s.numHosts or 0,
                )
            elif isinstance(obj, vim.Datastore):
                datastores[props["name"]] = DatastoreInfo(
                    props["name"], props.get("summary.capacity") or 0,
                    props.get("summary.freeSpace") or 0,
                )
            else:
                networks.add(props["name"])
        return DatacenterInfo(name, clusters, datastores, frozenset(networks))

    def _collect(
        self, root: vim.ManagedEntity, paths: Mapping[type, list[str]]
    ) -> list[tuple[Any, dict[str, Any]]]:
        """(object, {path: value}) for every object of the given types below root."""
        view = self._content.viewManager.CreateContainerView(root, list(paths), True)
        try:
            return retrieve(self._content, view, paths)
        finally:
            view.Destroy()


def login(access: Access, timeout: float, **options: Any) -> Any:
    """A logged-in ServiceInstance. The certificate is checked as `access.trust` says before
    anything is sent (a vCenter listed in VCM_VCENTER_INSECURE: not at all, with a WARNING).
    VCenterUnavailable when unreachable, untrusted, no vCenter, or the login is refused."""
    host, port = address(access.vcenter)
    if access.trust.kind == "insecure":
        log.warning("vcenter %s: TLS certificate NOT verified (%s): whoever sits on the way "
                    "can read the login and answer for the vCenter", access.vcenter,
                    access.trust.insecure_because)
    try:
        return SmartConnect(
            host=host, port=port, user=access.user, pwd=access.password,
            sslContext=access.trust.context(timeout), httpConnectionTimeout=timeout, **options,
        )
    except vim.fault.InvalidLogin:
        raise VCenterUnavailable(f"login as {access.user!r} failed (bad credentials)") from None
    except OSError as exc:  # refused, timed out, DNS, TLS
        raise VCenterUnavailable(problem(exc)) from None
    except vmodl.MethodFault as exc:
        raise VCenterUnavailable(f"login failed: {exc.msg}") from None
    except HTTPException as exc:  # TLS passed, but what answers does not speak HTTP as it should
        raise VCenterUnavailable(f"no vSphere API there: {type(exc).__name__}: "
                                 f"{shown(str(exc))}") from None
    except Exception as exc:
        # pyvmomi raises a bare Exception when https://host:port/sdk/vimServiceVersions.xml
        # is not there (an error, a redirect: not followed): anything else is not ours to name
        if type(exc) is not Exception:
            raise
        raise VCenterUnavailable(f"no vSphere API there: {exc}") from None


def problem(exc: OSError) -> str:
    """Why a connection failed, as a vCenter's error: a certificate that is not trusted (then
    nothing was sent), another TLS failure, or unreachable."""
    if isinstance(exc, ThumbprintMismatch):
        return f"TLS: certificate not trusted: {exc.verify_message}; not logged in"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: certificate not trusted: certificate verify failed: "
                f"{exc.verify_message}; not logged in ({CA_HINT})")
    if isinstance(exc, ssl.SSLError):
        return f"TLS: handshake failed: {exc.reason or exc}; not logged in"
    return f"unreachable: {exc}"


def retrieve(content: Any, view: Any, paths: Mapping[type, list[str]]
             ) -> list[tuple[Any, dict[str, Any]]]:
    """(object, {path: value}) for every object of the given types in a ContainerView: one
    RetrievePropertiesEx, then its continuation pages."""
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[pc.TraversalSpec(
            name="view", type=vim.view.ContainerView, path="view", skip=False)])],
        propSet=[pc.PropertySpec(type=t, pathSet=p) for t, p in paths.items()],
    )
    collector = content.propertyCollector
    result = collector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
    rows: list[tuple[Any, dict[str, Any]]] = []
    while result is not None:
        rows += [(o.obj, {p.name: p.val for p in o.propSet}) for o in result.objects]
        token = result.token
        result = collector.ContinueRetrievePropertiesEx(token) if token else None
    return rows


def connector(plan: AccessPlan, *, timeout: float = 30.0
              ) -> Callable[[str], VCenterInventory]:
    """A `connect` for check_pools: logs into a pool's vcenter as `plan` allows; a vCenter
    it refuses is not contacted (VCenterUnavailable with the reason)."""

    def connect(vcenter: str) -> VCenterInventory:
        access = plan.access.get(vcenter)
        if access is None:
            raise VCenterUnavailable(plan.refused.get(vcenter, "not contacted: no access to "
                                                               "it was planned"))
        return VCenterInventory.connect(access, timeout=timeout)

    return connect


def check_pools(
    pools: Iterable[Pool], connect: Callable[[str], VCenterInventory]
) -> list[Finding]:
    """Findings for every pool, one vCenter at a time; closes the inventories it opens."""
    by_vcenter: dict[str, list[Pool]] = {}
    for pool in pools:
        by_vcenter.setdefault(pool.vcenter, []).append(pool)
    findings: list[Finding] = []
    for vcenter, members in by_vcenter.items():
        names = ", ".join(p.name for p in members)
        try:
            with connect(vcenter) as inventory:
                for pool in members:
                    findings += _check_pool(pool, inventory)
        except (VCenterUnavailable, OSError) as exc:
            why = problem(exc) if isinstance(exc, OSError) else str(exc)
            findings.append(Finding(names, "vcenter", "error",
                                    f"{names}: vcenter {vcenter}: {why}"))
        except Exception as exc:  # noqa: BLE001 - a finding, never a traceback
            detail = exc.msg if isinstance(exc, vmodl.MethodFault) else str(exc)
            findings.append(Finding(
                names, "vcenter", "error",
                f"{names}: vcenter {vcenter}: cannot read the inventory: "
                f"{type(exc).__name__}: {detail}",
            ))
    return findings


def _check_pool(pool: Pool, inventory: VCenterInventory) -> list[Finding]:
    def error(field: str, what: str, name: str, where: str, have: Iterable[str]) -> Finding:
        return Finding(pool.name, field, "error",
                       f"{pool.name}: {what} {name!r} not found {where} (have: {_names(have)})")

    def warning(field: str, text: str) -> Finding:
        return Finding(pool.name, field, "warning", f"{pool.name}: {text}")

    dc = inventory.datacenter(pool.datacenter)
    if dc is None:  # nothing else can be checked
        return [error("datacenter", "datacenter", pool.datacenter, f"on {inventory.name}",
                      inventory.datacenters())]
    where = f"in datacenter {dc.name!r} on {inventory.name}"
    out: list[Finding] = []

    cluster = dc.clusters.get(pool.cluster)
    if cluster is None:
        out.append(error("cluster", "cluster", pool.cluster, where, dc.clusters))
    else:
        if pool.vcpus > cluster.cpu_threads:
            out.append(warning("vcpus", f"vcpus budget {pool.vcpus} exceeds cluster capacity "
                                        f"{cluster.cpu_threads} logical CPUs"))
        if pool.memory * GIB > cluster.memory_bytes:
            out.append(warning("memory", f"memory budget {pool.memory} GB exceeds cluster "
                                         f"capacity {_gb(cluster.memory_bytes)} GB"))

    datastore = dc.datastores.get(pool.datastore)
    if datastore is None:
        out.append(error("datastore", "datastore", pool.datastore, where, dc.datastores))
    elif pool.storage * GIB > datastore.capacity_bytes:
        out.append(warning("storage", f"storage budget {pool.storage} GB exceeds datastore "
                                      f"capacity {_gb(datastore.capacity_bytes)} GB"))

    for i, net in enumerate(pool.networks):
        if net.port_group not in dc.networks:
            out.append(error(f"networks[{i}].port-group", "port group", net.port_group, where,
                             dc.networks))
    return out


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    more = len(ordered) - HAVE_MAX
    return ", ".join(ordered[:HAVE_MAX]) + (f", … {more} more" if more > 0 else "")


def _gb(size: int) -> str:
    value = size / GIB
    return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"
