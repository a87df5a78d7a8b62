"""Every Redis key the capacity manager uses, named once. Celery's own keys (the broker's
queues, `celery-task-meta-*` results) are Celery's: see tasks/results.py.

All keys share a prefix (`vcm:` unless a test gives its own). The ledger's Lua scripts (lua/)
build the same names from the prefix (ARGV[1]); their headers say which they touch. They are
not passed in KEYS because which keys a script touches depends on what it reads there: a
release learns a lease's owner and pool (`owner:<owner>`, `use:<pool>`) from its record, in
the same atomic step. Declaring them would take a read before the script, and a lease could
change between the two. That is sound on one Redis (the ledger's), not on Redis Cluster.

=====================  ===============================================================
key                    what it holds
=====================  ===============================================================
version                bumped by every change to usage (decisions are committed against it)
seq                    bumped by every change at all (the mirror follows it)
ready                  set once the ledger is rebuilt (or known empty); writes refuse without
use:<pool>             hash vcpus, memory, storage, leases, vcenter: per-pool usage
pools                  set of pool names that have ever had usage
nets                   hash network key -> its holders' lease ids, space-separated (the
                       leases of one install may share a network): networks in use; the
                       key is "<vcenter>|<port-group>[|<pod>[|<slice>]]" (core/lease.py)
leases                 hash lease id -> lease JSON (active leases)
owner:<owner>          set of an owner's active lease ids
expiry                 zset lease id -> expires-at (epoch seconds)
req:<n>:<owner>:<id>   JSON list of lease ids: the idempotency record of (owner, request-id)
answered:<task id>     JSON: the answer a task id was given (its lease ids, or its refusal),
                       for every copy of the task; expires (Ledger.answer_ttl)
gone:<lease id>        hash lease, released-at, reason: a released lease, kept a while
quarantine             hash id -> a record set aside (it cannot be read) and what it holds
                       (ledger/records.py); its usage stays counted until a release by id
pins                   hash "<vcenter>|<port-group>" -> id of the set-aside record claiming it
blocked                set of set-aside ids whose holdings cannot be read: no placement
waiting                zset request key -> arrival: the waiting line
waiters                hash request key -> the waiting request and its task
twins:<request key>    set of task ids sent again for a request that waits
arrivals               counter giving the waiting line its order
outbox                 hash task id -> "<seq>|<answer JSON>": answers held for the mirror
kick                   list: wakes the publisher (a change to mirror, an answer to release)
mirror                 hash: the mirror publisher's status (see workers/publisher/thread.py)
stats                  hash of counters (placements, releases, reaps, refusals, ...; per
                       network type: fulfilled:<type>, pending:<type>, delayed:<type>)
latency                hash: acquire latency histogram
reaped                 list of the last 1,000 reaped leases
usage                  stream of usage rollups, trimmed to the retention
health                 hash vcenter -> JSON {at, pools: {pool: {state, reason}}, error,
                       error-at, login-at}: live vCenter health (core/health.py)
namespaces             hash: the namespace pruning's status (state, checked-at, pruned-at,
                       namespaces, released, runs, errors, error, last-error, last-error-at)
=====================  ===============================================================

The HTTP shim keeps two names of its own, under `vcm-api:` (not the ledger's prefix: they are
the shim's, whatever ledger it serves):

=====================  ===============================================================
vcm-api:task:<id>      JSON {task, sent-at}: a task id the shim handed out (GET /tasks/{id})
vcm-api:hub            a pub/sub channel the shim subscribes to at once, so that its result
                       connection exists before the first task's channel is added
=====================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "vcm:"
API_TASK_RECORD = "vcm-api:task:"  # + task id
API_HUB_CHANNEL = "vcm-api:hub"


@dataclass(frozen=True)
class Keys:
    prefix: str = PREFIX

    @property
    def version(self) -> str:
        return self.prefix + "version"

    @property
    def seq(self) -> str:
        return self.prefix + "seq"

    @property
    def ready(self) -> str:
        return self.prefix + "ready"

    @property
    def leases(self) -> str:
        return self.prefix + "leases"

    @property
    def nets(self) -> str:
        return self.prefix + "nets"

    @property
    def expiry(self) -> str:
        return self.prefix + "expiry"

    @property
    def quarantine(self) -> str:
        return self.prefix + "quarantine"

    @property
    def pins(self) -> str:
        return self.prefix + "pins"

    @property
    def blocked(self) -> str:
        return self.prefix + "blocked"

    @property
    def waiting(self) -> str:
        return self.prefix + "waiting"

    @property
    def waiters(self) -> str:
        return self.prefix + "waiters"

    @property
    def outbox(self) -> str:
        return self.prefix + "outbox"

    @property
    def kick(self) -> str:
        return self.prefix + "kick"

    @property
    def mirror(self) -> str:
        return self.prefix + "mirror"

    @property
    def stats(self) -> str:
        return self.prefix + "stats"

    @property
    def latency(self) -> str:
        return self.prefix + "latency"

    @property
    def reaped(self) -> str:
        return self.prefix + "reaped"

    @property
    def usage(self) -> str:
        return self.prefix + "usage"

    @property
    def health(self) -> str:
        return self.prefix + "health"

    @property
    def namespaces(self) -> str:
        return self.prefix + "namespaces"

    def use(self, pool: str) -> str:
        return f"{self.prefix}use:{pool}"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def request(self, key: str) -> str:
        return f"{self.prefix}req:{key}"

    def answered(self, task_id: str) -> str:
        return f"{self.prefix}answered:{task_id}"

    def gone(self, lease_id: str) -> str:
        return f"{self.prefix}gone:{lease_id}"

    def twins(self, key: str) -> str:
        return f"{self.prefix}twins:{key}"


KEYS = Keys()
