"""Checks rendered and committed Kubernetes manifests; run by scripts/check-manifests.

    validate_manifests.py CRDS FILE...

- Built-in kinds: kubernetes-validate --strict against the oldest and newest Kubernetes the
  chart supports (unknown fields are errors).
- ferry.dev kinds: JSON Schema of the CRDs in CRDS (structure, types, enums, bounds,
  patterns). CEL rules are not evaluated here; the Rust example test does that for examples/.
- Kinds of other projects (Argo CD, Flux, Prometheus Operator): no schema is available
  offline, so they are skipped by name, and counted.
- Policy for ferry's own workloads: hardened security contexts, probes and resources on every
  container, and a dispatcher that cannot reach the Kubernetes API.
- The Argo CD health script for ModelEndpoint, run in Lua 5.1 (Argo CD's dialect) on sample
  objects.
"""

import copy
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
SKIPPED_KINDS = {
    ("argoproj.io/v1alpha1", "Application"): "Argo CD",
    ("source.toolkit.fluxcd.io/v1", "GitRepository"): "Flux",
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"): "Flux",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus Operator",
    ("monitoring.coreos.com/v1", "PodMonitor"): "Prometheus Operator",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
ARGOCD_HEALTH_KEY = "resource.customizations.health.ferry.dev_ModelEndpoint"


def load_documents(path):
    with open(path) as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def openapi_to_jsonschema(schema):
    """An openAPIV3Schema as JSON Schema: `nullable` becomes a null type, int-or-string a union,
    and unknown fields are errors (as `kubectl apply` with strict field validation has them)."""
    schema = copy.deepcopy(schema)
    schema["properties"].update(
        apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
    )

    def convert(node):
        if isinstance(node, dict):
            for value in node.values():
                convert(value)
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            if node.get("x-kubernetes-int-or-string"):
                node.pop("type", None)
                node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            if node.pop("nullable", False):
                if "type" in node:
                    node["type"] = [node["type"], "null"]
                if "enum" in node and None not in node["enum"]:
                    node["enum"].append(None)
                if "anyOf" in node:
                    node["anyOf"].append({"type": "null"})
        elif isinstance(node, list):
            for value in node:
                convert(value)

    convert(schema)
    return schema


def crd_validators(crds_path):
    validators = {}
    for crd in load_documents(crds_path):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def check_workload(doc, errors):
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    pod = doc["spec"]["template"]["spec"]
    pod_context = pod.get("securityContext", {})
    if pod_context.get("runAsNonRoot") is not True:
        errors.append(f"{name}: pod securityContext.runAsNonRoot must be true")
    if pod_context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        errors.append(f"{name}: pod seccompProfile must be RuntimeDefault")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        where = f"{name} container {container['name']}"
        context = container.get("securityContext", {})
        if context.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem must be true")
        if context.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation must be false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            errors.append(f"{where}: capabilities must drop ALL")
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in container:
                errors.append(f"{where}: no {probe}")
        if "requests" not in container.get("resources", {}):
            errors.append(f"{where}: no resource requests")
    if doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "dispatcher":
        if pod.get("automountServiceAccountToken") is not False:
            errors.append(f"{name}: the dispatcher must not mount a service account token")


def check_dispatcher_has_no_api_access(docs, errors):
    for doc in docs:
        if doc.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        for subject in doc.get("subjects", []):
            if subject.get("kind") == "ServiceAccount" and subject["name"].endswith("-dispatcher"):
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} grants the dispatcher API access")


def check_replicated_roles_keep_serving(docs, errors):
    """Each ferry Deployment of more than one replica has a PodDisruptionBudget selecting its
    pods and a topology spread constraint (or pod anti-affinity), so a node drain never takes
    every replica at once."""
    budgets = [doc["spec"]["selector"].get("matchLabels", {}) for doc in docs
               if doc.get("kind") == "PodDisruptionBudget"]
    for doc in docs:
        if doc.get("kind") != "Deployment" or doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") != "ferry":
            continue
        if doc["spec"].get("replicas", 1) <= 1:
            continue
        name = f"Deployment/{doc['metadata']['name']} ({doc['spec']['replicas']} replicas)"
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        if not any(selector and selector.items() <= labels.items() for selector in budgets):
            errors.append(f"{name}: no PodDisruptionBudget selects its pods")
        pod = doc["spec"]["template"]["spec"]
        anti_affinity = pod.get("affinity", {}).get("podAntiAffinity")
        if not pod.get("topologySpreadConstraints") and not anti_affinity:
            errors.append(f"{name}: no topologySpreadConstraints or podAntiAffinity")


# A role's own shutdown deadlines, which must end before Kubernetes kills the pod.
SHUTDOWN_ENV = ("FERRY_GATEWAY_SHUTDOWN_DELAY_SECONDS", "FERRY_GATEWAY_REQUEST_GRACE_SECONDS",
                "FERRY_DISPATCHER_SHUTDOWN_GRACE_SECONDS")


def check_shutdown_fits_grace_period(doc, errors):
    pod = doc["spec"]["template"]["spec"]
    period = pod.get("terminationGracePeriodSeconds", 30)
    for container in pod.get("containers", []):
        deadlines = sum(int(env["value"]) for env in container.get("env", [])
                        if env.get("name") in SHUTDOWN_ENV and "value" in env)
        if deadlines and deadlines >= period:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} container {container['name']}: "
                          f"its shutdown takes {deadlines} s, not below terminationGracePeriodSeconds {period}")


def check_argocd_health(doc, errors):
    import lupa.lua51

    script = doc["data"][ARGOCD_HEALTH_KEY]
    ready = lambda status, reason: {  # noqa: E731
        "type": "Ready", "status": status, "reason": reason, "message": "m",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    cases = [
        ({"metadata": {"generation": 1}}, "Progressing"),
        ({"metadata": {"generation": 2}, "status": {"observedGeneration": 1,
                                                   "conditions": [ready("True", "Ready")]}}, "Progressing"),
        ({"metadata": {"generation": 2}, "status": {"observedGeneration": 2,
                                                   "conditions": [ready("True", "Ready")]}}, "Healthy"),
        ({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
                                                   "conditions": [ready("False", "RolloutInProgress")]}}, "Progressing"),
        ({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
                                                   "conditions": [ready("False", "InvalidSpec")]}}, "Degraded"),
        ({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "state": "UPDATE_FAILED",
                                                   "conditions": [ready("False", "BundleNotFound")]}}, "Degraded"),
    ]
    lua = lupa.lua51.LuaRuntime()
    health = lua.eval(f"function(obj) {script} end")
    for obj, expected in cases:
        result = health(lua.table_from(obj, recursive=True))
        if result["status"] != expected:
            errors.append(f"Argo CD health of {obj}: {result['status']}, expected {expected}")


def main():
    crds_path, *paths = sys.argv[1:]
    validators = crd_validators(crds_path)
    errors, counts, skipped = [], {"built-in": 0, "ferry.dev": 0}, {}
    for path in paths:
        docs = load_documents(path)
        check_dispatcher_has_no_api_access(docs, errors)
        check_replicated_roles_keep_serving(docs, errors)
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = f"{path}: {key[1]}/{doc.get('metadata', {}).get('name')}"
            if key in validators:
                counts["ferry.dev"] += 1
                for error in validators[key].iter_errors(doc):
                    errors.append(f"{name}: {'.'.join(map(str, error.path))}: {error.message}")
                continue
            if key in SKIPPED_KINDS:
                skipped[SKIPPED_KINDS[key]] = skipped.get(SKIPPED_KINDS[key], 0) + 1
                continue
            counts["built-in"] += 1
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    errors.append(f"{name} (Kubernetes {version}): {error.message} at {list(error.path)}")
                except kubernetes_validate.SchemaNotFoundError as error:
                    errors.append(f"{name}: {error} (add it to SKIPPED_KINDS if it is another project's kind)")
            if key[1] in WORKLOAD_KINDS and doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "ferry":
                check_workload(doc, errors)
                check_shutdown_fits_grace_period(doc, errors)
            if key[1] == "ConfigMap" and ARGOCD_HEALTH_KEY in doc.get("data", {}):
                check_argocd_health(doc, errors)
    for error in errors:
        print(f"  {error}", file=sys.stderr)
    skipped_text = ", ".join(f"{count} of {owner}" for owner, count in sorted(skipped.items()))
    print(f"  {counts['built-in']} built-in objects (strict, Kubernetes {' and '.join(KUBERNETES_VERSIONS)}), "
          f"{counts['ferry.dev']} ferry.dev objects (CRD schema) in {len(paths)} files; "
          f"skipped without a schema: {skipped_text or 'none'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
