"""The files an OpenShift CI job step writes into its SHARED_DIR for the steps after it, from
one install's leases: what the `ipi-conf-vsphere-check-vcm` step of openshift/release writes,
under the same names and keys, so that the steps reading them work unchanged.

- `LEASE_<name>.json`, `NETWORK_<name>.json`, `POOL_<name>.json`: each Lease, Network and
  Pool object (upstream's shapes) of the install;
- `LEASE_single.json` (the first lease with vCPUs), `NETWORK_single.json` (its first
  network: the VIPs are `spec.ipAddresses[2]` and `[3]`, within `spec.machineNetworkCidr`),
  `POOL_single.json` (its pool);
- `subnets.json`: the single network's object, plus every network's spec keyed by router,
  then VLAN, with `dnsServer` (the gateway, as the CI step writes it), `mask`,
  `StartIPv6Address` and `CidrIPv6`;
- `platform.json`, `platform.yaml`: install-config's `platform.vsphere` (`vcenters` with an
  account each, `failureDomains`), the YAML indented to sit under `platform:`/`  vsphere:`;
- `govc.sh`, `vsphere_context.sh`: the single lease's envVars, then the file paths, the
  resource pool, `cloud_where_run` and the account; the context also names the extra NICs'
  and the bastion's port groups;
- `dvs.json` (only when asked; built by the caller from the vCenters): `network_paths` says
  which networks it describes.

The resource pool is the CI step's: `<computeCluster>/Resources/ipi-ci-clusters` (a UPI job
names its own child of `Resources`), in govc.sh and in every failure domain; or, when asked,
each pool's configured `topology.resourcePool`.

Pure Python, no I/O: the caller reads the accounts (and the vCenters) and writes the
files."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .shell import ShellSyntax, exported_value
from .text import text_problem

EXTRA_LABEL = "VSPHERE_EXTRA_LEASED_RESOURCE"
BASTION_LABEL = "VSPHERE_BASTION_LEASED_RESOURCE"
AUTH_ANNOTATION = "ci-auth-path"
SINGLE = "single"
# the files written for one install (besides the per-object ones)
FIXED = ("LEASE_single.json", "NETWORK_single.json", "POOL_single.json", "subnets.json",
         "platform.json", "platform.yaml", "govc.sh", "vsphere_context.sh")
DVS = "dvs.json"  # written when asked: it is read from the vCenters (adapters/vcenter/dvs.py)
PER_OBJECT = ("LEASE_", "NETWORK_", "POOL_")
MAX_NAME = 200  # a name in a file name: well below any file system's 255 bytes
# the resource pool the CI step puts IPI installs in, below each cluster's root pool
CI_RESOURCE_POOL = "ipi-ci-clusters"
MAX_RESOURCE_POOL = 80  # vSphere's longest object name
# what the CI step exports as cloud_where_run (the gather and deprovision steps branch on it)
CLOUD_WHERE_RUN = "IBM"


class StepFilesError(ValueError):
    """Why the files cannot be written: `option` names the command-line option at fault
    ("" when the leases themselves are)."""

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class StepFile:
    name: str
    text: str
    secret: bool = False  # holds a password: written readable by its owner only


Account = tuple[str, str]  # (user, password)


@dataclass(frozen=True)
class Install:
    """One install's objects in upstream's shapes: its Leases in order, and the Networks and
    Pools they refer to, by name."""

    leases: tuple[Mapping[str, Any], ...]
    networks: Mapping[str, Mapping[str, Any]]
    pools: Mapping[str, Mapping[str, Any]]

    def pool(self, name: str, lease: Mapping[str, Any]) -> Mapping[str, Any]:
        pool = self.pools.get(name)
        if pool is None:
            raise StepFilesError(f"lease {_name(lease)!r}: its pool {name!r} is not known")
        return pool

    def pool_of(self, lease: Mapping[str, Any]) -> Mapping[str, Any]:
        """The lease's first pool (status.name, the CI step's `oc get pools`)."""
        name = str(_status(lease).get("name") or next(iter(_refs(lease, "Pool")), ""))
        return self.pool(name, lease)

    def domains_of(self, lease: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], str]]:
        """Each pool of the lease (a lease of several pools lists them in poolInfo) with the
        port group of its first network there."""
        info = _status(lease).get("poolInfo")
        entries = [e for e in info if isinstance(e, Mapping)] if isinstance(info, list) else []
        entries = entries or [_status(lease)]
        return [(self.pool(str(e.get("name", "")), lease), _first_port_group(e))
                for e in entries]

    def networks_of(self, lease: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        out = []
        for name in _refs(lease, "Network"):
            net = self.networks.get(name)
            if net is None:
                raise StepFilesError(f"lease {_name(lease)!r}: its network {name!r} is not "
                                     "known")
            out.append(net)
        return out

    @property
    def primary(self) -> list[Mapping[str, Any]]:
        """The leases with vCPUs (network-only leases carry none), in order."""
        return [x for x in self.leases if _spec(x).get("vcpus")]

    @property
    def single(self) -> Mapping[str, Any]:
        primary = self.primary
        if not primary:
            raise StepFilesError("none of these leases has vCPUs (all are network-only): "
                                 "LEASE_single.json would be missing", option="selector")
        return primary[0]

    def network_paths(self) -> list[tuple[str, str]]:
        """(vCenter, /<datacenter>/network/<port group>) of every network of every lease, in
        order, each once: what dvs.json describes."""
        out: dict[tuple[str, str], None] = {}
        for lease in self.leases:
            info = _status(lease).get("poolInfo")
            domains = [e for e in info if isinstance(e, Mapping)] if isinstance(info, list) \
                else []
            for domain in domains or [_status(lease)]:
                topo = domain.get("topology")
                nets = topo.get("networks") if isinstance(topo, Mapping) else None
                for path in nets if isinstance(nets, list) else []:
                    out.setdefault((str(domain.get("server", "")), str(path)))
        return list(out)

    def all_pools(self) -> list[Mapping[str, Any]]:
        """The pools of every lease, network-only ones too."""
        return self.account_pools() + [pool for x in self.leases
                                       for pool, _ in self.domains_of(x)]

    def account_pools(self) -> list[Mapping[str, Any]]:
        """The pools whose vCenters need an account: every pool of the primary leases (the
        single lease's first)."""
        pools = [self.pool_of(self.single)]
        return pools + [pool for x in self.primary for pool, _ in self.domains_of(x)]


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, Mapping) else {}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name", ""))


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = _meta(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _refs(lease: Mapping[str, Any], kind: str) -> list[str]:
    refs = _meta(lease).get("ownerReferences") or []
    return [str(r.get("name", "")) for r in refs
            if isinstance(r, Mapping) and r.get("kind") == kind]


def _first_port_group(domain: Mapping[str, Any]) -> str:
    """The port group of a failure domain's first network: the last element of
    topology.networks[0], as the CI step cuts it."""
    topo = domain.get("topology")
    nets = topo.get("networks") if isinstance(topo, Mapping) else None
    if not isinstance(nets, list) or not nets:
        return ""
    return str(nets[0]).rsplit("/", 1)[-1]


def port_group(lease: Mapping[str, Any]) -> str:
    """The port group of a lease's first network (status.topology.networks[0])."""
    return _first_port_group(_status(lease))


def file_name(prefix: str, name: str) -> str:
    """`<prefix><name>.json`; a name that cannot be one file's name is refused."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > MAX_NAME:
        raise StepFilesError(f"{prefix.rstrip('_').lower()} name {name[:MAX_NAME]!r} cannot "
                             "be part of a file name")
    return f"{prefix}{name}.json"


def resource_pool_problem(name: str) -> str:
    """Why `name` cannot be a resource pool below a cluster's `Resources` ("" when it can)."""
    if not name.strip():
        return "is empty"
    if len(name) > MAX_RESOURCE_POOL:
        return f"is longer than {MAX_RESOURCE_POOL} characters"
    problem = text_problem(name)  # lone surrogates (bytes argv could not decode), controls
    if problem:
        return problem
    # "." and ".." would name the cluster's Resources, or the cluster, in an inventory path
    if "/" in name or name in (".", ".."):
        return "must be one name: no '/', not '.' or '..'"
    return ""


def resource_pool(topo: Mapping[str, Any], child: str | None) -> str:
    """A failure domain's resource pool: `child` below its cluster's root resource pool
    (`<computeCluster>/Resources/<child>`, as the CI step sets it), or with `child` None
    the pool's configured one."""
    if child is None:
        return str(topo.get("resourcePool", ""))
    return f"{topo.get('computeCluster', '')}/Resources/{child}"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def subnets(install: Install) -> dict[str, Any]:
    """subnets.json: the single lease's first network as its object, with every network of
    every lease under [router][VLAN]: its spec plus `dnsServer` (the gateway, as the CI step
    writes it; the nameservers are in the spec), `mask` (the netmask), `StartIPv6Address`
    and `CidrIPv6`."""
    single_nets = install.networks_of(install.single)
    out: dict[str, Any] = json.loads(json.dumps(single_nets[0])) if single_nets else {}
    reserved = set(out)
    seen: set[str] = set()
    for lease in install.leases:
        for net in install.networks_of(lease):
            if _name(net) in seen:
                continue
            seen.add(_name(net))
            spec = dict(_spec(net))
            router = str(spec.get("primaryRouterHostname") or "")
            vlan = str(spec.get("vlanId") or "")
            if router in reserved:
                raise StepFilesError(f"network {_name(net)!r}: router {router!r} is also a key "
                                     "of the network object in subnets.json")
            entry = {**spec,
                     "dnsServer": spec.get("gateway", ""),
                     "mask": spec.get("netmask", ""),
                     "StartIPv6Address": spec.get("startIPv6Address", ""),
                     "CidrIPv6": spec.get("cidrIPv6", 0)}
            out.setdefault(router, {})[vlan] = entry
    return out


def platform(install: Install, accounts: Mapping[str, Account], multi_nic: bool = False,
             child: str | None = CI_RESOURCE_POOL) -> dict[str, Any]:
    """install-config's platform.vsphere for the install: a vcenters entry per vCenter of
    its primary leases' pools (with its account and datacenters) and a failure domain per
    pool, from the Pool object, with the port group of the lease's first network there
    (with `multi_nic`, then the extra NICs' port groups) and the resource pool (`child` of
    its cluster's, or None: the pool's own)."""
    extras = [port_group(x) for x in sorted(
        (x for x in install.leases if EXTRA_LABEL in _labels(x)), key=_extra_index)]
    vcenters: dict[str, dict[str, Any]] = {}
    domains: dict[str, dict[str, Any]] = {}
    for lease in install.primary:
        for pool_object, first in install.domains_of(lease):
            pool = _spec(pool_object)
            server = str(pool.get("server", ""))
            topo = pool.get("topology")
            topo = topo if isinstance(topo, Mapping) else {}
            datacenter = str(topo.get("datacenter", ""))
            name = str(pool.get("name", ""))
            if name not in domains:
                networks = [first] + (extras if multi_nic else [])
                topology = {"resourcePool": resource_pool(topo, child),
                            "computeCluster": topo.get("computeCluster", ""),
                            "datacenter": datacenter, "datastore": topo.get("datastore", ""),
                            "networks": [n for n in dict.fromkeys(networks) if n]}
                for key in ("folder", "template"):
                    if topo.get(key):
                        topology[key] = topo[key]
                domains[name] = {"server": server, "name": name, "zone": pool.get("zone", ""),
                                 "region": pool.get("region", ""), "topology": topology}
            if server not in vcenters:
                user, password = accounts[server]
                vcenters[server] = {"server": server, "user": user, "password": password,
                                    "datacenters": [datacenter]}
            elif datacenter not in vcenters[server]["datacenters"]:
                vcenters[server]["datacenters"].append(datacenter)
    return {"vcenters": list(vcenters.values()), "failureDomains": list(domains.values())}


def _extra_index(lease: Mapping[str, Any]) -> tuple[int, str]:
    value = str(_labels(lease).get(EXTRA_LABEL, ""))
    return (int(value), value) if value.isdigit() else (1 << 30, value)


def platform_yaml(spec: Mapping[str, Any]) -> str:
    """platform.json as YAML, every line indented four spaces: the install-config step
    writes it below `platform:` and `  vsphere:`."""
    import yaml

    text = yaml.safe_dump(dict(spec), sort_keys=False, default_flow_style=False,
                          width=1 << 16, allow_unicode=True)
    return "".join(f"    {line}\n" if line else "\n" for line in text.splitlines())


def _export(name: str, value: str) -> str:
    return f"export {name}={shlex.quote(value)}"


def govc_env(install: Install, accounts: Mapping[str, Account], shared_dir: str,
             ca_certs: str = "", child: str | None = CI_RESOURCE_POOL) -> str:
    """govc.sh, as the CI step writes it: the single lease's envVars, then where its files
    are, how govc connects (trusting `ca_certs`, else not checking certificates, as the CI
    step does), the resource pool (`child` of its pool's cluster, or None: the pool's own),
    `cloud_where_run` and the account for its vCenter."""
    single = install.single
    env_vars = str(_status(single).get("envVars") or "")
    try:
        govc_url = exported_value(env_vars, "GOVC_URL")
    except ShellSyntax as exc:
        raise StepFilesError(f"lease {_name(single)!r}: its envVars cannot be read: "
                             f"{exc}") from None
    if not govc_url:
        raise StepFilesError(f"lease {_name(single)!r}: its envVars set no GOVC_URL (the "
                             "capacity manager gave no environment for it)")
    pool = _spec(install.pool_of(single))
    topo = pool.get("topology") if isinstance(pool.get("topology"), Mapping) else {}
    rp = resource_pool(topo, child)
    server = str(pool.get("server", ""))
    user, password = accounts[server]
    lines = [env_vars.rstrip("\n"),
             _export("LEASE_PATH", f"{shared_dir}/LEASE_single.json"),
             _export("NETWORK_PATH", f"{shared_dir}/NETWORK_single.json")]
    if not ca_certs:
        lines.append(_export("GOVC_INSECURE", "1"))
    lines += [_export("vsphere_resource_pool", rp), _export("GOVC_RESOURCE_POOL", rp),
              _export("cloud_where_run", CLOUD_WHERE_RUN),
              _export("GOVC_USERNAME", user), _export("GOVC_PASSWORD", password)]
    if ca_certs:
        lines += [_export("GOVC_TLS_CA_CERTS", ca_certs), _export("SSL_CERT_FILE", ca_certs)]
    return "\n".join(line for line in lines if line) + "\n"


def context_env(install: Install, govc: str) -> str:
    """vsphere_context.sh: govc.sh, then the port groups of the extra NICs
    (`vsphere_extra_portgroup_<i>`) and of the bastion (`vsphere_bastion_portgroup`)."""
    lines = [govc.rstrip("\n")]
    for lease in install.leases:
        labels = _labels(lease)
        if BASTION_LABEL in labels:
            lines.append(_export("vsphere_bastion_portgroup", port_group(lease)))
        elif EXTRA_LABEL in labels:
            index = str(labels[EXTRA_LABEL])
            if not index.isdigit():
                raise StepFilesError(f"lease {_name(lease)!r}: label {EXTRA_LABEL} is "
                                     f"{index[:40]!r}, not a number")
            lines.append(_export(f"vsphere_extra_portgroup_{int(index)}", port_group(lease)))
    return "\n".join(lines) + "\n"


def step_files(install: Install, accounts: Mapping[str, Account], shared_dir: str, *,
               multi_nic: bool = False, ca_certs: str = "",
               child: str | None = CI_RESOURCE_POOL) -> list[StepFile]:
    """Every file of the install, by name: nothing is written unless all of them can be.
    `child`: the resource pool below each cluster's root one (None: each pool's own)."""
    if child is not None and resource_pool_problem(child):
        raise StepFilesError(f"resource pool {child[:MAX_RESOURCE_POOL]!r} "
                             f"{resource_pool_problem(child)}", option="resource-pool")
    if not install.leases:
        raise StepFilesError("no leases", option="selector")
    servers = [str(_spec(p).get("server", "")) for p in install.account_pools()]
    missing = [s for s in servers if s not in accounts]
    if missing:
        raise StepFilesError(f"no vCenter account for {missing[0]}", option="credentials")
    files: dict[str, StepFile] = {}

    def put(name: str, value: Any, text: str | None = None, secret: bool = False) -> None:
        files[name] = StepFile(name, _json(value) if text is None else text, secret)

    for lease in install.leases:
        put(file_name("LEASE_", _name(lease)), lease)
        for net in install.networks_of(lease):
            put(file_name("NETWORK_", _name(net)), net)
        for pool, _ in install.domains_of(lease):
            put(file_name("POOL_", _name(pool)), pool)
    single = install.single
    single_nets = install.networks_of(single)
    if not single_nets:
        raise StepFilesError(f"lease {_name(single)!r} holds no network: NETWORK_single.json "
                             "would be missing")
    put("LEASE_single.json", single)
    put("NETWORK_single.json", single_nets[0])
    put("POOL_single.json", install.pool_of(single))
    put("subnets.json", subnets(install))
    spec = platform(install, accounts, multi_nic, child)
    put("platform.json", spec, secret=True)
    put("platform.yaml", None, platform_yaml(spec), secret=True)
    govc = govc_env(install, accounts, shared_dir, ca_certs, child)
    put("govc.sh", None, govc, secret=True)
    put("vsphere_context.sh", None, context_env(install, govc), secret=True)
    return list(files.values())


def stale(existing: list[str], written: list[StepFile]) -> list[str]:
    """The per-object files (LEASE_*, NETWORK_*, POOL_*) of an earlier run that this one
    does not write: a retried step must not leave a released lease's file for the steps
    after it to read."""
    keep = {f.name for f in written}
    return sorted(n for n in existing if n.endswith(".json") and n not in keep
                  and n.startswith(PER_OBJECT))


def install_of(leases: Iterable[Mapping[str, Any]],
               pool_views: Iterable[Mapping[str, Any]]) -> Install:
    """One install from our leases (wire shape, in their listing order) and the pools as
    `vcm.show_pools` shows them: the leases of one request are one Lease object (a
    multi-pool lease lists its pools in poolInfo), their networks as granted, their pools'
    objects. A pool since removed from the configuration is described by its leases: its
    failure domain and annotations as granted."""
    from .lease import Lease
    from .upstream import (
        API_VERSION,
        failure_domain_spec,
        held_network_objects,
        lease_object,
        pool_object_name,
        pool_objects,
    )

    groups: dict[tuple[str, str], list[Lease]] = {}
    for wire in leases:
        x = Lease.from_wire(wire)
        groups.setdefault((x.owner, x.request_id or x.id), []).append(x)
    pools = {_name(p): p for p in pool_objects(pool_views)}
    networks: dict[str, Mapping[str, Any]] = {}
    objects = []
    for group in groups.values():
        objects.append(lease_object(group))
        for x in group:
            for net in held_network_objects(x):
                networks.setdefault(_name(net), net)
            name = pool_object_name(x.pool)
            if name not in pools:
                meta: dict[str, Any] = {"name": name}
                if x.pool_annotations:
                    meta["annotations"] = dict(x.pool_annotations)
                pools[name] = {"apiVersion": API_VERSION, "kind": "Pool", "metadata": meta,
                               "spec": failure_domain_spec(x)}
    return Install(tuple(objects), networks, pools)
