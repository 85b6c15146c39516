"""The schema registry of an EventBroker (`spec.schemaRegistry`): pure functions, as resources.py.

A Deployment of `strata-registry` (the broker image carries it) with `spec.schemaRegistry.replicas` pods,
each advertising its pod IP to the others (followers forward writes to the leader), and a ClusterIP
Service `<name>-schema-registry` on the REST port. The brokers get `schema.registry.principal`, the
principal the registry connects as, so it may write the internal `_schemas` topic
(docs/schema-registry.md).
"""

from __future__ import annotations

from typing import Any

from . import resources

REGISTRY_PRINCIPAL = "User:ANONYMOUS"  # the first listener without authentication (the CRD's rule)


def enabled(broker: dict[str, Any]) -> bool:
    spec = broker.get("spec", {})
    return bool((spec.get("schemaRegistry") or {}).get("enabled")) and not spec.get("external")


def registry_name(broker: dict[str, Any]) -> str:
    return f"{broker['metadata']['name']}-schema-registry"


def registry_port(broker: dict[str, Any]) -> int:
    return int((broker["spec"].get("schemaRegistry") or {}).get("port", 8081))


def registry_url(broker: dict[str, Any]) -> str:
    """Where clients (and the operator) reach the registry, inside the cluster."""
    return f"http://{registry_name(broker)}.{broker['metadata']['namespace']}.svc:{registry_port(broker)}"


def broker_properties(broker: dict[str, Any]) -> dict[str, str]:
    """The brokers' settings the registry needs (none when it is off)."""
    return {"schema.registry.principal": REGISTRY_PRINCIPAL} if enabled(broker) else {}


def registry_objects(broker: dict[str, Any], default_pull_secrets: list[str] | tuple[str, ...] = ()
                     ) -> list[dict[str, Any]]:
    """The Service and the Deployment, in apply order (none when the registry is off)."""
    if not enabled(broker):
        return []
    spec = broker["spec"]
    name, port = registry_name(broker), registry_port(broker)
    component = "schema-registry"
    container: dict[str, Any] = {
        "name": "registry",
        "image": spec["image"],
        "command": ["strata-registry", "--bootstrap", resources.bootstrap_servers(broker),
                    "--listen", f"0.0.0.0:{port}", "--advertised-url", f"http://$(POD_IP):{port}"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "initialDelaySeconds": 60,
                          "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # protoc compiles .proto schemas there
        "securityContext": resources.RESTRICTED_CONTAINER,
    }
    if spec.get("imagePullPolicy"):
        container["imagePullPolicy"] = spec["imagePullPolicy"]
    pull = resources.pull_secrets(spec, default_pull_secrets)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": resources.meta(broker, name, component),
               "spec": {"type": "ClusterIP", "selector": resources.selector(broker, component),
                        "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": resources.meta(broker, name, component),
        "spec": {
            "replicas": int((spec.get("schemaRegistry") or {}).get("replicas", 1)),
            "selector": {"matchLabels": resources.selector(broker, component)},
            "template": {
                "metadata": {"labels": resources.labels(broker, component)},
                "spec": {
                    "serviceAccountName": resources.broker_names(broker["metadata"]["name"])["serviceaccount"],
                    "automountServiceAccountToken": False,
                    "securityContext": resources.RESTRICTED_POD,
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                    **({"imagePullSecrets": pull} if pull else {}),
                },
            },
        },
    }
    return [service, deployment]
