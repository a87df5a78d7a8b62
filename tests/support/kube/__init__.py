"""A small, real kube-apiserver for tests, over plain HTTP (or HTTPS with ``tls=True``, a
certificate of the test process's CA: kubectl sends no token to a plain-http server):
ConfigMaps, Namespaces, core v1 Events (schemaless) and the custom resources of deploy/crds/
(Lease, Pool, Network), served to the unmodified ``kubernetes`` Python client, kopf and
kubectl as kube-apiserver serves them.

Modules: ``server`` (KubeApiServer: lifecycle, client helpers, faults, dispatch), ``http``
(the handler: JSON answers, watch streams, trickled answers), ``core`` (the shared lock,
resourceVersion counter, change history and watches), ``watch``, ``configmaps``,
``namespaces``, ``crd`` (CRD manifests), ``custom`` (the generic custom resource store),
``schema`` (structural pruning, defaulting, validation), ``selectors``, ``patches`` (merge,
JSON and strategic merge patches), ``builtin``, ``apiextensions``, ``protobuf``,
``routing`` (what a path means, for dispatch and RBAC), ``discovery`` (discovery documents,
Tables), ``openapi`` (OpenAPI v2 and v3), ``errors``, ``faults``. Each says which behaviour
of the real apiserver it reproduces and where that behaviour is defined.

ConfigMaps (``/api/v1/namespaces/{ns}/configmaps[/{name}]``): resourceVersion (one global
counter, as a string), uid, creationTimestamp, 404 NotFound, 409 AlreadyExists / Conflict, 422
Invalid (FieldValueTooLong above 1,048,576 bytes of data + binaryData), merge, strategic-merge
and JSON patches, label and field selectors on list, watch, delete preconditions and dryRun.
Errors are ``Status`` objects shaped like the real ones.

Namespaces (``/api/v1/namespaces[/{name}]``): list (label selectors, ``metadata.name`` and
``status.phase`` field selectors), watch, get, create (422 on an invalid name, 409
AlreadyExists, also while one of that name is Terminating), merge/JSON patch and delete. The
server starts with ``default``, ``kube-node-lease``, ``kube-public`` and ``kube-system``; the
API refuses to delete ``default``, ``kube-public`` and ``kube-system`` (403, as the
NamespaceLifecycle admission does). A delete marks the namespace Terminating
(``deletionTimestamp``, ``status.phase``); the namespace controller is simulated as instant: it
deletes the namespace's custom objects (those with finalizers keep it Terminating until they
are gone), and a namespace without ``metadata.finalizers`` and without content is removed at
once, with its ConfigMaps; one with finalizers stays Terminating until they are patched away
(or ``finish_namespace``). ConfigMaps do not need their namespace to exist; custom objects do
(404 without it, 403 while it is Terminating). ``create_namespace``, ``delete_namespace``,
``remove_namespace`` (gone without a trace, even a system one) and ``namespace_names`` act on
the store directly.

Built-in kinds (``builtin``): Secrets, Services, ServiceAccounts, Deployments, StatefulSets,
Roles, ClusterRoles, their bindings and NetworkPolicies, stored by the custom resource store
without a schema, with strategic merge patches; CustomResourceDefinitions as objects
(``apiextensions``: a created one is registered and served at once, a deleted one takes its
objects and kind with it); protobuf request bodies of the kinds ``kubectl create`` sends
(``protobuf``).

Custom resources (``crds=``, by default every CRD of deploy/crds/, loaded from the YAML, each
also a CustomResourceDefinition object; ``crds=[]`` starts with none): see
``custom`` (create with generateName, get, list with label/field selectors and paging,
update with resourceVersion conflicts, merge/JSON/apply patches, the status subresource,
generation, finalizers and deletionTimestamp, deletecollection, the garbage collector of
ownerReferences, structural pruning with fieldValidation Strict/Warn/Ignore, defaults,
validation with causes naming the field), ``watch`` (resourceVersion, bookmarks,
timeoutSeconds, 410 Expired after ``compact()``), ``discovery`` and ``openapi``.
``custom_object``, ``custom_objects``, ``put_custom`` (store behind the API's back) and
``remove_custom`` act on the store directly; ``crd("leases")`` is a definition.

Watches: ``history_limit=`` (changes kept, default 10,000), ``compact(rv=None)`` (forget the
history up to rv: older watches get 410), ``bookmark_interval`` and ``watch_timeout``
(seconds, settable), ``close_watches(error=None)`` (end every open stream, as a restart of
the apiserver does, optionally with an ERROR event first), ``open_watches``.

RBAC (``rbac=RbacPolicy.from_files("deploy/rbac.yaml")``, see support/rbac.py): requests are
authorized as kube-apiserver's RBAC authorizer does, by the Roles, ClusterRoles and bindings of
those manifests, for the user of the bearer token, with the request attributes of
kube-apiserver's RequestInfo (API group, resource, subresource such as ``leases/status``,
namespace, name, verb: get, list, watch, create, update, patch, delete, deletecollection):
``token_for(namespace, service_account)`` issues a service account's token,
``write_kubeconfig(..., token=...)`` writes a kubeconfig with it. What RBAC does not allow is
answered 403 Forbidden, a Status shaped like the real one; an unknown token 401 Unauthorized;
no token is ``system:anonymous``. Discovery and OpenAPI are allowed to every authenticated
user (``system:discovery``). ``api_client()`` and a kubeconfig without a token of their own use
an admin token (group ``system:masters``): the test's own look at the store.

Faults are injected from Python: ``inject_fault(status=503, count=3)``, ``inject_fault(hang=2.0)``,
``inject_fault(trickle=0.01)`` (a slow proxy: the answer's body one byte at a time, so that
every read of the client is short while the whole answer is not; ``hold=`` an Event keeps its
last byte back until set; ``trickling`` counts the answers under way, ``trickled`` lists how
each ended: "sent", or "cut" when the client went away first) (``count=None`` means until
``clear_faults()``), ``set_latency(0.01)``; ``resource="namespaces"`` (``"configmaps"``, or a
custom plural such as ``"leases"``) restricts a fault to one resource; ``add_hook`` runs a
function before each request. ``writes`` counts the successful mutating requests.

Usage in a test::

    @pytest.fixture
    def kube():
        with KubeApiServer() as server:
            yield server

    def test_x(kube):
        core = kubernetes.client.CoreV1Api(kube.api_client())
        custom = kubernetes.client.CustomObjectsApi(kube.api_client())
"""

from tests.support.kube.configmaps import MAX_CONFIGMAP_BYTES
from tests.support.kube.namespaces import SYSTEM_NAMESPACES
from tests.support.kube.server import KubeApiServer

__all__ = ["KubeApiServer", "MAX_CONFIGMAP_BYTES", "SYSTEM_NAMESPACES"]
