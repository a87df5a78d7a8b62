"""The Lease controller: upstream's Kubernetes API (`Lease`, `Pool`, `Network` of
`vspherecapacitymanager.splat.io/v1`) as a front door to the placement queue.

`operator` wires kopf (`vcm controller`); `leases` answers each Lease; `inventory` publishes
the Pools and Networks and compares the ledger with the Leases; `requests` turns a Lease into
its `vcm.acquire` request; `status` is what a Lease shows at each step; `placement` sends tasks
and waits for their answers; `kube` writes to the API server. docs/custom-resources.md tells
the whole story."""
