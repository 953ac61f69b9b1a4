"""A stand-in Kubernetes API server for operator tests: kmock's KubernetesEmulator plus the
semantics the operator relies on and kmock lacks.

kmock stores objects, serves get/list/watch/create/delete and merges PATCH bodies into stored
objects. This shim adds: uid, resourceVersion, generation and creationTimestamp stamping;
server-side apply as an upsert (PATCH of a missing object creates it); JSON patches (with their
`test` operations) and merge patches; PUT with resourceVersion conflicts (Lease updates);
equality label selectors on list and watch; Kubernetes' status reasons (NotFound, Conflict,
AlreadyExists) so clients recognise them; and garbage collection of objects whose owners are
gone. It is a smoke-test harness, not a model of API-server semantics: an apply merges instead
of tracking field managers (except for status, whose top-level fields are tracked per
manager, so the operator's and the autoscaler's applies keep each other's), the scale
subresource of Deployments reads and writes `spec.replicas` (which an apply without replicas
then leaves alone), and there is no admission, validation or defaulting.

Usage: python3 kube_apiserver.py [--ready-deployments] [PORT]
Prints `listening on http://127.0.0.1:PORT`. With --ready-deployments it also plays the
Deployment controller: every applied Deployment reports all its replicas ready shortly after.
"""

import asyncio
import copy
import datetime
import itertools
import sys
import uuid

import aiohttp.web
import attrs
import jsonpatch
import kmock

RESOURCES = {
    "ferry.dev/v1alpha1/modelendpoints": "ModelEndpoint",
    "ferry.dev/v1alpha1/modelbundles": "ModelBundle",
    "apps/v1/deployments": "Deployment",
    "v1/services": "Service",
    "v1/secrets": "Secret",
    "coordination.k8s.io/v1/leases": "Lease",
    "events.k8s.io/v1/events": "Event",
}

REASONS = {404: "NotFound", 409: "Conflict", 422: "Invalid"}


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def removals(old, new):
    """`new`, with None for every key of `old` it lacks: kmock's patch removes None keys."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    merged = {key: removals(old.get(key), value) for key, value in new.items()}
    for key in old:
        if key not in new:
            merged[key] = None
    return merged


def selected(obj: dict, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


WRITES = (kmock.action.CREATE, kmock.action.UPDATE)


class ApiServer(kmock.KubernetesEmulator):
    # Set to play the Deployment controller (every Deployment becomes ready after a write).
    deployment_controller = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.versions = itertools.count(1)
        # Per object: the top-level status fields each field manager applied.
        self.status_owners: dict[tuple, dict[str, set[str]]] = {}
        # Objects whose replicas were set through the scale subresource.
        self.scaled: set[tuple] = set()
        for resource, kind in RESOURCES.items():
            self.resources[resource].kind = kind
            self.resources[resource].namespaced = True

    def next_version(self) -> str:
        return str(next(self.versions))

    def stamp_new(self, data: dict, namespace: str | None) -> dict:
        data = copy.deepcopy(data)
        meta = data.setdefault("metadata", {})
        if namespace and not meta.get("namespace"):
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self.next_version()
        meta["generation"] = 1
        meta["creationTimestamp"] = now()
        return data

    def current(self, request) -> dict | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None

    def stamp_update(self, request, old: dict, new: dict) -> dict:
        """The new state as a kmock patch: bumped versions, removed keys as None."""
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        old_meta = old.get("metadata", {})
        for key in ("uid", "creationTimestamp", "namespace", "name", "generation"):
            if key in old_meta:
                meta[key] = old_meta[key]
        meta["resourceVersion"] = self.next_version()
        if request.subresource is None and new.get("spec") != old.get("spec"):
            meta["generation"] = old_meta.get("generation", 1) + 1
        return removals(old, new)

    def rewrite(self, request):
        content_type = request.headers.get("Content-Type", "")
        method = request.method.value.upper()
        if request.action == kmock.action.CREATE:
            return attrs.evolve(request, data=self.stamp_new(request.data, request.namespace))
        if request.name is None or method not in ("PATCH", "PUT"):
            return request
        old = self.current(request)
        if request.subresource == "scale":
            if old is None:
                raise kmock.KubernetesObjectNotFoundError()
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["replicas"] = request.data.get("spec", {}).get("replicas")
            self.scaled.add((request.resource, request.namespace, request.name))
        elif old is None:
            if "apply-patch" in content_type:
                data = self.stamp_new(request.data, request.namespace)
                return attrs.evolve(request, action=kmock.action.CREATE, data=data)
            raise kmock.KubernetesObjectNotFoundError()
        elif method == "PUT":
            sent = request.data.get("metadata", {}).get("resourceVersion")
            if sent is not None and sent != old["metadata"]["resourceVersion"]:
                raise kmock.KubernetesError(status=409, reason="Conflict", message="the object has been modified")
            new = request.data
        elif "json-patch" in content_type:
            try:
                new = jsonpatch.apply_patch(old, null_tests_pass(old, request.data))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error))
        elif "merge-patch" in content_type:
            new = copy.deepcopy(old)
            merge(new, request.data)
        elif request.subresource == "status":
            new = {**old, "status": self.apply_status(request, old.get("status"))}
        else:
            # Server-side apply by the object's only manager: metadata merges, the rest of what
            # it applies replaces what was there; status stays.
            new = copy.deepcopy(old)
            merge(new["metadata"], request.data.get("metadata", {}))
            for key, value in request.data.items():
                if key not in ("apiVersion", "kind", "metadata", "status"):
                    new[key] = copy.deepcopy(value)
            # The replicas belong to whoever set them through the scale subresource.
            scaled = (request.resource, request.namespace, request.name) in self.scaled
            if scaled and "replicas" in old.get("spec", {}) and "replicas" not in new.get("spec", {}):
                new.setdefault("spec", {})["replicas"] = old["spec"]["replicas"]
        if request.subresource == "status":
            new = {**old, "status": new.get("status")}
        if without_version(new) == without_version(old):
            # A write that changes nothing: no new resourceVersion, no watch event.
            raise Unchanged(old)
        data = self.stamp_update(request, old, new)
        return attrs.evolve(request, action=kmock.action.UPDATE, data=data)

    def apply_status(self, request, old: dict | None) -> dict:
        """A server-side apply of status by one field manager: the top-level status fields it
        applies become its own and replace what was there; fields it owned and no longer
        applies go; fields of other managers stay."""
        key = (request.resource, request.namespace, request.name)
        manager = request.params.get("fieldManager", "")
        applied = request.data.get("status") or {}
        owners = self.status_owners.setdefault(key, {})
        status = dict(old or {})
        for field in owners.get(manager, set()) - applied.keys():
            if not any(field in fields for other, fields in owners.items() if other != manager):
                status.pop(field, None)
        for fields in owners.values():
            fields -= applied.keys()
        owners[manager] = set(applied.keys())
        status.update(copy.deepcopy(applied))
        return status

    async def _handle(self, request):
        if request.resource is None:
            return await super()._handle(request)
        if request.subresource == "scale":
            response = await self._handle_object(request)
            stored = self.current(request)
            if response.status >= 300 or stored is None:
                return response
            return aiohttp.web.json_response(as_scale(stored))
        return await self._handle_object(request)

    async def _handle_object(self, request):
        try:
            rewritten = self.rewrite(request)
        except kmock.KubernetesError as error:
            return await self._render_error(error)
        except Unchanged as unchanged:
            return aiohttp.web.json_response(unchanged.args[0])
        # kmock routes only requests it has recorded, and its routing slows down with every
        # request it keeps: keep just the one being routed (the rewritten one, if rewritten).
        self._requests[:] = [rewritten]
        request = rewritten
        may_delete = request.action == kmock.action.DELETE or "json-patch" in request.headers.get(
            "Content-Type", ""
        )
        response = await super()._handle(request)
        if may_delete:
            await self.collect_garbage()
        rolled = request.resource.plural == "deployments" and request.subresource in (None, "scale")
        if self.deployment_controller and rolled and request.action in WRITES:
            asyncio.get_running_loop().call_later(
                0.05, lambda: asyncio.ensure_future(self.roll_out(request))
            )
        return response

    async def roll_out(self, request) -> None:
        """Plays the Deployment controller: every desired replica becomes ready."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return
            obj = self.objects[key]
            raw = obj.raw
            replicas = raw.get("spec", {}).get("replicas", 1)
            generation = raw.get("metadata", {}).get("generation", 1)
            status = {
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }
            if raw.get("status") == status:
                return
            obj.patch({"status": status, "metadata": {"resourceVersion": self.next_version()}})
            await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})

    def live_uids(self) -> set[str]:
        return {
            obj.raw.get("metadata", {}).get("uid")
            for obj in self.objects.values()
            if not obj.deleted
        }

    async def collect_garbage(self) -> None:
        """Deletes objects whose every owner is gone, as the garbage collector would."""
        while True:
            live = self.live_uids()
            orphans = [
                (key, obj)
                for key, obj in self.objects.items()
                if not obj.deleted
                and (owners := obj.raw.get("metadata", {}).get("ownerReferences"))
                and not any(owner.get("uid") in live for owner in owners)
            ]
            if not orphans:
                return
            for (resource, _, _), obj in orphans:
                raw = obj.raw
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})

    async def _render_error(self, exc):
        if isinstance(exc, kmock.KubernetesError) and exc.status in REASONS:
            exc = kmock.KubernetesError(
                status=exc.status,
                reason=REASONS[exc.status],
                message=exc.message,
                details={},
            )
        return await super()._render_error(exc)

    async def _serve_list(self, request):
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        listing["items"] = [item for item in listing["items"] if selected(item, selector)]
        listing["metadata"] = {"resourceVersion": str(next(self.versions))}
        return listing

    async def _serve_watch(self, request):
        """kmock's watch, subscribed before the snapshot of existing objects is taken: kmock's
        own subscribes after streaming the snapshot, losing the events of that gap."""
        selector = request.params.get("labelSelector")
        yield b""  # send the headers now: the stream may stay quiet for long
        bus = self._buses[request.resource]
        marker = await bus.mark()
        try:
            async with self._lock:
                snapshot = [
                    obj.raw
                    for (resource, namespace, _), obj in self.objects.items()
                    if resource == request.resource
                    and not obj.deleted
                    and (request.namespace is None or namespace == request.namespace)
                ]
            for raw in snapshot:
                if selected(raw, selector):
                    yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=marker):
                raw = event.get("object", {})
                namespace = raw.get("metadata", {}).get("namespace")
                if request.namespace is not None and namespace != request.namespace:
                    continue
                if selected(raw, selector):
                    yield event
        finally:
            await bus.unmark(marker)


def as_scale(obj: dict) -> dict:
    """The scale subresource of a Deployment."""
    meta = obj.get("metadata", {})
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in meta},
        "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)},
    }


class Unchanged(Exception):
    """Raised with the stored object when a write would not change it."""


def without_version(obj: dict) -> dict:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def null_tests_pass(document: dict, operations: list) -> list:
    """Drops `test` operations expecting null at a missing path: Kubernetes lets them pass."""
    def missing(path: str) -> bool:
        node = document
        for token in path.strip("/").split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return True
        return node is None

    return [
        op for op in operations
        if not (op.get("op") == "test" and op.get("value") is None and missing(op["path"]))
    ]


def merge(target: dict, patch: dict) -> None:
    """RFC 7386 merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


async def main() -> None:
    args = sys.argv[1:]
    handler = ApiServer()
    if "--ready-deployments" in args:
        args.remove("--ready-deployments")
        handler.deployment_controller = True
    port = int(args[0]) if args else 0
    # Entered, kmock renders errors raised while serving as API errors instead of failing.
    async with handler, kmock.Server(handler, port=port) as server:
        print(f"listening on http://127.0.0.1:{server.port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
