"""The service layer: what tasks, the HTTP shim and the CLI call. `capacity.Capacity` composes
the modules below and holds the one lock that makes changes one at a time.

capacity.py     Capacity: the face of the layer
placing.py      parse, decide, commit, answer (and a known request-id's leases)
waiting.py      the waiting line: an acquire that must wait parks here; serve in arrival
                order, expire, cancel
releasing.py    release, reap, renew
queries.py      pools, leases, estimates, the usage rollup and its history
recovery.py     the ledger's seq, floor and journal coverage; rebuilding Redis from the mirror
usage_cache.py  the ledger's usage between decisions
namespaces.py   releases the leases of CI namespaces that are gone (beat)

The ledger, the pools, the replies and the mirror are reached through the Protocols of
workers/ports.py; the namespace pruning lists namespaces with the Kubernetes client itself.
"""
