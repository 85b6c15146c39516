"""Pure reconciliation decisions (no I/O): desired topic configs, drift, conflicts, writers,
conditions. The kopf handlers feed these with what they read and apply what they return."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .durations import duration_ms, size_bytes

# -- conditions ----------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]] | None, type_: str, status: bool | str, reason: str,
                  message: str, generation: int | None) -> list[dict[str, Any]]:
    """A new list with `type_` set; lastTransitionTime only moves when the status changes."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in (conditions or []) if c.get("type") != type_]
    old = next((c for c in conditions or [] if c.get("type") == type_), None)
    cond = {"type": type_, "status": status_text, "reason": reason, "message": message,
            "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status_text
            and old.get("lastTransitionTime") else now()}
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: (c["type"] != "Ready", c["type"]))


def drop_condition(conditions: list[dict[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions or [] if c.get("type") != type_]


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


# -- references ----------------------------------------------------------------------------


def broker_key(cr: dict[str, Any]) -> tuple[str, str]:
    ref = cr["spec"]["brokerRef"]
    return (ref.get("namespace") or cr["metadata"]["namespace"], ref["name"])


def namespace_allowed(broker: dict[str, Any], namespace: str) -> bool:
    """Whether resources in `namespace` may use this EventBroker: its own namespace always; others
    when spec.allowedNamespaces lists them (or `*`)."""
    allowed = (broker.get("spec") or {}).get("allowedNamespaces") or []
    return namespace == broker["metadata"]["namespace"] or namespace in allowed or "*" in allowed


def shared(broker: dict[str, Any]) -> bool:
    """Whether the EventBroker serves namespaces besides its own (then consumer groups are namespaced)."""
    ns = broker["metadata"]["namespace"]
    return any(a != ns for a in (broker.get("spec") or {}).get("allowedNamespaces") or [])


RESERVED_TOPICS = ("_schemas",)


def reserved_topic(name: str) -> bool:
    """Internal and reserved topics (`__consumer_offsets`, `__meta`, anything starting `__`,
    `_schemas`): no Topic manages them and no Microservice is granted them."""
    return name.startswith("__") or name in RESERVED_TOPICS


def age_key(cr_meta: dict[str, Any]) -> tuple[str, str, str]:
    """Older first: creationTimestamp, then namespace/name as a stable tie-break."""
    return (cr_meta.get("creationTimestamp") or "9999", cr_meta.get("namespace") or "", cr_meta["name"])


# -- topics --------------------------------------------------------------------------------


class InvalidSpec(ValueError):
    pass


def topic_name(topic: dict[str, Any]) -> str:
    """The Kafka topic a Topic's spec names: spec.topicName, else metadata.name."""
    return topic["spec"].get("topicName") or topic["metadata"]["name"]


def managed_topic_name(topic: dict[str, Any]) -> str:
    """The Kafka topic a Topic manages: the one recorded in status.topicName at its first reconcile
    (so a rename that got past admission can neither orphan that topic nor delete another), else
    the one its spec names."""
    return (topic.get("status") or {}).get("topicName") or topic_name(topic)


def desired_topic_configs(spec: dict[str, Any]) -> dict[str, str]:
    """The topic configs a Topic spec enforces (Kafka names and string values)."""
    out: dict[str, str] = {}
    try:
        out.update({str(k): str(v) for k, v in (spec.get("config") or {}).items() if v is not None})
        if "retention" in spec:
            out["retention.ms"] = str(duration_ms(spec["retention"]))
        if "retentionBytes" in spec:
            out["retention.bytes"] = str(size_bytes(spec["retentionBytes"]))
        if "localRetention" in spec:
            out["local.retention.ms"] = str(duration_ms(spec["localRetention"]))
        if "localRetentionBytes" in spec:
            out["local.retention.bytes"] = str(size_bytes(spec["localRetentionBytes"]))
    except ValueError as exc:
        raise InvalidSpec(str(exc)) from exc
    if spec.get("cleanupPolicy"):
        out["cleanup.policy"] = spec["cleanupPolicy"]
    if spec.get("durability"):
        out["strata.durability"] = spec["durability"]
    if "tiered" in spec:
        out["remote.storage.enable"] = "true" if spec["tiered"] else "false"
    partitions = spec.get("partitions", 1)
    if not isinstance(partitions, int) or partitions < 1:
        raise InvalidSpec(f"partitions must be a positive integer, not {partitions!r}")
    if spec.get("durability") == "s3" and not spec.get("tiered"):
        raise InvalidSpec("durability s3 needs tiered: true")
    return out


@dataclass
class TopicPlan:
    create: bool = False
    grow_to: int | None = None
    set_configs: dict[str, str] = field(default_factory=dict)
    delete_configs: list[str] = field(default_factory=list)
    cannot_shrink: tuple[int, int] | None = None  # (current, asked)
    managed: list[str] = field(default_factory=list)  # the config keys this spec enforces (status.managedConfigs)
    differences: list[str] = field(default_factory=list)  # "key: broker value -> spec value", for adoption reports

    @property
    def changes(self) -> bool:
        return bool(self.create or self.grow_to or self.set_configs or self.delete_configs)


def plan_topic(spec: dict[str, Any], current_partitions: int | None, dynamic: dict[str, str] | None,
               effective: dict[str, str] | None = None, managed: list[str] | None = None) -> TopicPlan:
    """Unidirectional (Kubernetes -> broker): what to do so the broker matches what the spec names.

    Only keys the spec names are enforced (drift on them is reverted). A dynamic config the spec does
    not name is left alone, except one the operator enforced before (`managed`, from
    status.managedConfigs) and the spec no longer names: that one is reset to the cluster default.
    Partitions are enforced only when the spec names them; a new topic gets 1 when it does not (and
    the broker's defaults for every config the spec leaves out): defaults apply at creation only."""
    desired = desired_topic_configs(spec)
    plan = TopicPlan(managed=sorted(desired))
    if current_partitions is None:
        plan.create = True
        plan.set_configs = desired
        return plan
    if "partitions" in spec:
        partitions = int(spec["partitions"])
        if partitions > current_partitions:
            plan.grow_to = partitions
            plan.differences.append(f"partitions: {current_partitions} -> {partitions}")
        elif partitions < current_partitions:
            plan.cannot_shrink = (current_partitions, partitions)
    dynamic = dynamic or {}
    effective = effective or {}
    for key, value in desired.items():
        have = dynamic.get(key, effective.get(key))
        if have != value:
            plan.set_configs[key] = value
            plan.differences.append(f"{key}: {have if have is not None else '(unset)'} -> {value}")
    plan.delete_configs = sorted(k for k in dynamic if k in set(managed or []) and k not in desired)
    plan.differences += [f"{k}: {dynamic[k]} -> (cluster default)" for k in plan.delete_configs]
    return plan


def unmanaged_configs(dynamic: dict[str, str] | None, desired: list[str]) -> list[str]:
    """The topic's own (dynamic) configs a Topic leaves alone because its spec does not name them."""
    return sorted(k for k in dynamic or {} if k not in desired)


def conflict_winner(claimants: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several Topic CRs naming one Kafka topic on one broker, the oldest wins."""
    return min(claimants, key=age_key)


# -- microservices -------------------------------------------------------------------------


def access_refusals(namespace: str, broker_namespace: str, topics: list[str],
                    owners: dict[str, dict[str, Any] | None], allow_field: str) -> dict[str, str]:
    """topic -> why a service in `namespace` may not use it (absent: it may).

    `owners`: topic -> the Topic resource (index entry) that manages it, or None. A topic is usable
    by services of the owning Topic's namespace and of the namespaces its `allow_field`
    (allowedConsumers / allowedProducers) lists (`*`: any). A topic no Topic manages belongs to the
    broker's own namespace. Reserved topics are never usable."""
    out: dict[str, str] = {}
    for topic in topics:
        if reserved_topic(topic):
            out[topic] = "an internal/reserved topic"
            continue
        owner = owners.get(topic)
        if owner is None:
            if namespace != broker_namespace:
                out[topic] = (f"no Topic resource manages it, so it belongs to the broker's namespace "
                              f"{broker_namespace!r}; create a Topic for it")
            continue
        allowed = owner.get(allow_field) or []
        if owner["namespace"] != namespace and namespace not in allowed and "*" not in allowed:
            out[topic] = (f"owned by Topic {owner['namespace']}/{owner['name']}, whose spec.{allow_field} "
                          f"does not list namespace {namespace!r}")
    return out


def now_precise() -> str:
    """Now in UTC with microseconds (claim times compare as strings)."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Grants:
    permissions: list[dict[str, Any]]
    acls: list[tuple[str, str, str]]  # (resource type, name, operation)
    denied_writes: dict[str, str]  # topic -> the writer's namespace/name
    claims: list[dict[str, Any]] = field(default_factory=list)  # status.writeClaims of this service
    denied_reads: dict[str, str] = field(default_factory=dict)  # consumed topic -> why Read is not granted
    refused_writes: dict[str, str] = field(default_factory=dict)  # produced topic -> why its owner refuses it


def _claims(ms: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["topic"]: c for c in (ms.get("status") or {}).get("writeClaims") or [] if c.get("topic")}


def writers(microservices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """topic -> the Microservice that may write it: by claim, not by age.

    A service that holds Write on a topic (status.writeClaims[].writer) keeps it while it declares the
    topic. Otherwise the earliest recorded claim wins (a service records the time it first declared a
    topic, writer or not, so waiting services take over in the order they asked); a claim not recorded
    yet ranks after every recorded one; ties go to the older service (creationTimestamp, then
    namespace/name), so every reconcile, of any service, computes the same writer.
    `microservices` are all those of one broker (deleting ones excluded by the caller)."""
    candidates: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
    for ms in microservices:
        claims = _claims(ms)
        for topic in ms["spec"].get("produces") or []:
            claim = claims.get(topic) or {}
            rank = (0 if claim.get("writer") else 1, claim.get("since") or "~", age_key(ms["metadata"]))
            candidates.setdefault(topic, []).append((rank, ms))
    return {topic: min(entries, key=lambda e: e[0])[1] for topic, entries in candidates.items()}


def grants(ms: dict[str, Any], same_broker: list[dict[str, Any]], group: str | None,
           unreadable: dict[str, str] | None = None, unwritable: dict[str, str] | None = None,
           writer_of: dict[str, dict[str, Any]] | None = None) -> Grants:
    """Exactly what was declared, minus Write on topics another service writes, minus what the
    topics' owners do not allow (`unreadable` / `unwritable`: topic -> reason, from
    `access_refusals`), and without the group when `group` is None (not allowed). `writer_of`:
    `writers(same_broker)` when the caller computed it already (once for all services of a broker)."""
    unreadable = dict(unreadable or {})
    unwritable = dict(unwritable or {})
    me = (ms["metadata"]["namespace"], ms["metadata"]["name"])
    owners = writer_of if writer_of is not None else writers(same_broker)
    perms: list[dict[str, Any]] = []
    acls: list[tuple[str, str, str]] = []
    denied: dict[str, str] = {}
    produces = list(ms["spec"].get("produces") or [])
    consumes = list(ms["spec"].get("consumes") or [])
    claims = _claims(ms)
    new_claims: list[dict[str, Any]] = []
    for topic in sorted(set(produces) | set(consumes)):
        ops: list[str] = []
        if topic in produces and topic not in unwritable:
            owner = owners.get(topic, ms)
            writer = (owner["metadata"]["namespace"], owner["metadata"]["name"]) == me
            if writer:
                ops.append("Write")
            else:
                denied[topic] = f"{owner['metadata']['namespace']}/{owner['metadata']['name']}"
            new_claims.append({"topic": topic, "since": (claims.get(topic) or {}).get("since") or now_precise(),
                               "writer": writer})
        if topic in consumes and topic not in unreadable:
            ops.append("Read")
        if reserved_topic(topic):
            continue
        ops.append("Describe")
        perms.append({"resourceType": "topic", "name": topic, "operations": ops})
        acls += [("topic", topic, op.lower()) for op in ops]
    if consumes and group:
        perms.append({"resourceType": "group", "name": group, "operations": ["Read", "Describe"]})
        acls += [("group", group, "read"), ("group", group, "describe")]
    return Grants(perms, acls, denied, new_claims,
                  {t: r for t, r in unreadable.items() if t in consumes},
                  {t: r for t, r in unwritable.items() if t in produces})


def deployment_availability(want: int | None, deployment: dict[str, Any] | None) -> tuple[bool, int, str]:
    """(available, available replicas, message) of a Microservice's Deployment: available when all
    `want` replicas are (none wanted: available at once) and the Deployment has seen its latest spec.
    `want` None: replicas are not managed here (an HPA's): the Deployment's own spec.replicas."""
    if want is None:
        want = int(((deployment or {}).get("spec") or {}).get("replicas", 1))
    status = (deployment or {}).get("status") or {}
    have = int(status.get("availableReplicas") or 0)
    generation = int(((deployment or {}).get("metadata") or {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or generation)
    if deployment is None:
        return want == 0, 0, "no Deployment yet"
    if observed < generation:
        return False, have, f"the Deployment has not rolled out its latest spec yet ({have}/{want} available)"
    return have >= want, have, f"{have}/{want} replicas available"


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_QUANTITY_UNITS = {None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6),
                   "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18),
                   "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
                   "Pi": Decimal(2**50), "Ei": Decimal(2**60)}


def quantity(text: str | int) -> Decimal:
    """A Kubernetes quantity ("10Gi", "1.5T", 1000) as a number, for comparing sizes."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    return Decimal(match.group(1)) * _QUANTITY_UNITS[match.group(2)]
