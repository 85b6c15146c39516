"""Pure builders for broker clusters on Kubernetes: the placement ConfigMap and its volume.

An EventBroker with `spec.replicas > 1` (and not `external`) runs in cluster mode: the operator's
controller (handlers.py) publishes the placement as the ConfigMap `<name>-placement`, key
`placement.json`, mounted into every broker pod at PLACEMENT_DIR (optional, so pods start before
the first placement exists); the brokers get `cluster.placement.file` pointing at it.
"""

from __future__ import annotations

from typing import Any

from strata_contract.placement import Placement

from .. import resources

PLACEMENT_DIR = "/etc/strata/placement"
PLACEMENT_KEY = "placement.json"
PLACEMENT_FILE = f"{PLACEMENT_DIR}/{PLACEMENT_KEY}"
VOLUME = "placement"


def clustered(broker: dict[str, Any]) -> bool:
    spec = broker.get("spec") or {}
    return not spec.get("external") and int(spec.get("replicas", 1)) > 1


def placement_configmap_name(name: str) -> str:
    return f"{name}-placement"


def members(broker: dict[str, Any]) -> set[int]:
    """Broker ids that should exist: the StatefulSet's ordinals 0..replicas-1."""
    return set(range(int((broker.get("spec") or {}).get("replicas", 1))))


def placement_configmap(broker: dict[str, Any], placement: Placement) -> dict[str, Any]:
    name = placement_configmap_name(broker["metadata"]["name"])
    md = resources.meta(broker, name, "broker",
                        annotations={"strata.dev/placement-version": str(placement.version)})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": md,
            "data": {PLACEMENT_KEY: placement.to_json()}}


def placement_from_configmap(configmap: dict[str, Any] | None) -> Placement | None:
    text = ((configmap or {}).get("data") or {}).get(PLACEMENT_KEY)
    if not text:
        return None
    try:
        return Placement.from_json(text)
    except (ValueError, KeyError, TypeError):
        return None


def placement_volume(broker: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod volume, container volumeMount) of the placement ConfigMap."""
    name = placement_configmap_name(broker["metadata"]["name"])
    return ({"name": VOLUME, "configMap": {"name": name, "optional": True}},
            {"name": VOLUME, "mountPath": PLACEMENT_DIR, "readOnly": True})
