"""Durable mirror of the lease ledger: Kubernetes ConfigMap(s), or a local JSON file.

The ledger hands over a snapshot (a JSON-able dict) and gets back the number of writes it
took; ``load()`` returns the last complete snapshot, or None. Both mirrors satisfy
``workers.ports.Mirror``; the file mirror, which also takes each change as a journal record,
``workers.ports.JournaledMirror``.

codec.py      the snapshot encoded, which of two is newer, what a save reports
configmap.py  ConfigMapMirror: the compare-and-swap protocol over head and slot ConfigMaps
kube.py       the Kubernetes client's configuration and the ConfigMaps' API calls
file.py       FileMirror: snapshot plus journal
errors.py     MirrorError and its kinds; retrying what a retry can help
factory.py    which mirror the settings ask for
"""
