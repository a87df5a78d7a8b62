"""Where a lease lives, in the shapes its users need: the failure domain of an OpenShift
install-config (`platform.vsphere.failureDomains`, inventory paths), and shell `export` lines."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from .lease import Lease
from .models import Network, Pool


def _under(base: str, path: str) -> str:
    """An inventory path: absolute as given, else below `base`."""
    return path if path.startswith("/") else f"{base}/{path}"


# vSphere writes these characters of an object's name escaped in an inventory path
_ESCAPES = (("%", "%25"), ("/", "%2f"), ("\\", "%5c"))
# a '%' that starts none of those escapes
_LONE_PERCENT = re.compile(r"%(?!2[fF]|5[cC]|25)")


def path_element(name: str) -> str:
    """An object's name as one element of an inventory path, escaped as vSphere escapes it:
    '/' is "%2f", '\\' "%5c", and '%' "%25" unless it starts one of these escapes. vSphere's
    API gives names escaped so ("vsan%2f1" for a datastore shown as vsan/1), and such a name
    (as `vcm pools discover` writes it) stays as it is."""
    return _LONE_PERCENT.sub("%25", name).replace("/", "%2f").replace("\\", "%5c")


def element_name(element: str) -> str:
    """The object name one inventory path element stands for (path_element undone)."""
    for char, code in reversed(_ESCAPES):
        element = element.replace(code, char).replace(code.upper(), char)
    return element


def inventory_path(datacenter: str, folder: str, name: str) -> str:
    """"/<datacenter>/<folder>/<name>": `folder` is host, datastore, network or vm."""
    return f"/{datacenter}/{folder}/{path_element(name)}"


def network_path(datacenter: str, port_group: str) -> str:
    """A port group as install-config and upstream's topology name it:
    /<datacenter>/network/<port group>."""
    return inventory_path(datacenter, "network", port_group)


def port_group_of(path: str) -> str:
    """The port group a network path names (its last element); a bare name is itself."""
    return element_name(path.rsplit("/", 1)[-1]) if path.startswith("/") else path


def topology(pool: Pool, port_groups: Iterable[str]) -> dict[str, Any]:
    """A pool's topology as install-config (and upstream's Pool) writes it: inventory paths,
    the networks given as port groups in order, each once; folder and template only when
    the pool sets them."""
    cluster = inventory_path(pool.datacenter, "host", pool.cluster)
    domain = pool.domain_map()
    rp, folder, template = (domain.get(k) for k in ("resource-pool", "folder", "template"))
    out: dict[str, Any] = {
        "datacenter": pool.datacenter,
        "computeCluster": cluster,
        "datastore": inventory_path(pool.datacenter, "datastore", pool.datastore),
        "networks": list(dict.fromkeys(network_path(pool.datacenter, pg)
                                       for pg in port_groups)),
        "resourcePool": _under(f"{cluster}/Resources", rp) if rp else f"{cluster}/Resources",
    }
    if folder:
        out["folder"] = _under(f"/{pool.datacenter}/vm", folder)
    if template:
        out["template"] = _under(f"/{pool.datacenter}/vm", template)
    return out


def failure_domain(pool: Pool, networks: list[Network]) -> dict[str, Any]:
    """The install-config failure domain of a lease of `pool` holding `networks`: named by
    the pool's short-name, else its name."""
    domain = pool.domain_map()
    return {
        "name": domain.get("short-name") or pool.name,
        "region": domain.get("region", ""),
        "zone": domain.get("zone", ""),
        "server": pool.vcenter,
        "topology": topology(pool, (n.port_group for n in networks)),
    }


def _typed(lease: Lease | Mapping[str, Any]) -> Lease:
    """The CLI (an edge) passes leases in the wire shape."""
    return lease if isinstance(lease, Lease) else Lease.from_wire(lease)


def env_values(lease: Lease | Mapping[str, Any]) -> dict[str, str]:
    """The variables a job step gets for one lease (VCM_<name>)."""
    lease = _typed(lease)
    net = (lease.networks or [{}])[0]
    values = {
        "LEASE_ID": lease.id, "POOL": lease.pool,
        "VCENTER": lease.vcenter, "DATACENTER": lease.datacenter,
        "CLUSTER": lease.cluster, "DATASTORE": lease.datastore,
        "PORT_GROUP": net.get("port-group", ""), "VLAN": net.get("vlan", ""),
        "CIDR": net.get("cidr", ""), "GATEWAY": net.get("gateway", ""),
        "EXPIRES_AT": lease.expires_at, "OWNER": lease.owner,
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def lease_env(lease: Lease | Mapping[str, Any]) -> str:
    """Shell lines a job step can `eval` for one lease."""
    return "\n".join(f"export VCM_{k}={shlex.quote(v)}" for k, v in env_values(lease).items())


def install_network(network: str) -> str:
    """A failure domain's network as install-config names it: the port group alone, as one
    inventory path element (openshift-install looks it up below the computeCluster, joining
    the two), from an inventory path (its last element) or a port group name."""
    return network.rsplit("/", 1)[-1] if network.startswith("/") else path_element(network)


def platform_vsphere(leases: Iterable[Lease | Mapping[str, Any]]) -> dict[str, Any]:
    """install-config's `platform.vsphere` for these leases: one vcenters entry per server
    (with the datacenters used there) and one failure domain per lease, its networks named
    by port group (install_network)."""
    vcenters: dict[str, list[str]] = {}
    domains: dict[tuple[str, str], dict[str, Any]] = {}
    for lease in leases:
        fd = _typed(lease).failure_domain
        if not fd:
            continue
        dcs = vcenters.setdefault(fd["server"], [])
        if fd["topology"]["datacenter"] not in dcs:
            dcs.append(fd["topology"]["datacenter"])
        key = (fd["server"], fd["name"])
        networks = [install_network(n) for n in fd["topology"]["networks"]]
        if key not in domains:  # one domain per pool; more leases there add their networks
            domains[key] = {**fd, "topology": {**fd["topology"],
                                               "networks": list(dict.fromkeys(networks))}}
            continue
        nets = domains[key]["topology"]["networks"]
        nets.extend(n for n in networks if n not in nets)
    # sorted, so that the same leases always print the same block; a field the pool does not
    # set (a folder, a region) is left out rather than given as "", as the installer expects
    return {"platform": {"vsphere": {
        "vcenters": [{"server": s, "datacenters": vcenters[s]} for s in sorted(vcenters)],
        "failureDomains": [_set_only(domains[k]) for k in sorted(domains, key=lambda k: k[::-1])],
    }}}


def _set_only(domain: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in domain.items() if v != ""}
    out["topology"] = {k: v for k, v in domain["topology"].items() if v != ""}
    return out
