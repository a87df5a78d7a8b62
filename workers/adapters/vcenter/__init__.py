"""vCenter, through pyvmomi.

client.py          the one vCenter login, property retrieval, `vcm check-pools`
access.py          which vCenters get which credential, and how each certificate is checked
sessions.py        kept vCenter sessions: checked before use, logged in again
inventory_read.py  a whole vCenter in one property collection
inventory.py       the live inventory sync (beat, queries side)
discovery.py       `vcm pools discover`: a pools.yaml skeleton
"""
