"""The custom resources' schemas: the one source of crds/*.yaml (and of the Helm chart's copy).

`python -m strata_operator.crds [DIR]` (or `strata operator render-crds`) writes one file per CRD;
`--check` exits non-zero when the files on disk differ from what this module renders.

Every CRD has a structural schema, the status subresource, printer columns (Ready, key fields,
age), short names that do not collide with Strimzi's (kt, ku, k, kc, kmm2, kb, kctr, kr, knp),
and CEL rules (`x-kubernetes-validations`) for what admission can check.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "strata.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORIES = ["strata"]

# Kafka's own rule for topic names (kafka.common.internals.Topic): 1-249 of [a-zA-Z0-9._-].
TOPIC_NAME_PATTERN = r"^[a-zA-Z0-9._-]{1,249}$"
# A duration: one or more <integer><unit> (ms, s, m, h, d, w), e.g. "7d", "1h30m", "500ms".
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d|w))+$"
RETENTION_PATTERN = r"^(forever|([0-9]+(ms|s|m|h|d|w))+)$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
BYTES_PATTERN = r"^(forever|[0-9]+(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?)$"

# Topic configs that have a typed field; `config` passthrough may not set them.
TYPED_TOPIC_CONFIGS = ["retention.ms", "retention.bytes", "local.retention.ms", "local.retention.bytes",
                       "cleanup.policy", "strata.durability", "remote.storage.enable"]


# -- small schema vocabulary ---------------------------------------------------------------

def obj(properties: dict[str, Any], required: list[str] | None = None, description: str = "",
        rules: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    if description:
        out["description"] = description
    out["properties"] = properties
    if required:
        out["required"] = required
    if rules:
        out["x-kubernetes-validations"] = rules
    out.update(extra)
    return out


def string(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def integer(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "integer", **({"description": description} if description else {}), **extra}


def boolean(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "boolean", **({"description": description} if description else {}), **extra}


def array(items: dict[str, Any], description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "array", **({"description": description} if description else {}), "items": items, **extra}


def string_map(description: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": "object", **({"description": description} if description else {}),
            "additionalProperties": {"type": "string"}, **extra}


def rule(expr: str, message: str, **extra: str) -> dict[str, str]:
    return {"rule": expr, "message": message, **extra}


def free_form(description: str) -> dict[str, Any]:
    """An object passed through to Kubernetes as is (e.g. a container's resources, env entries)."""
    return {"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": True}


QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True}
RESOURCES = obj({
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY},
}, description="CPU and memory requests and limits, as in a container's `resources`.")

PULL_SECRETS = array(obj({"name": string(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", maxLength=253)},
                         required=["name"]),
                     "Secrets (in this namespace) for pulling the image, besides the operator's own "
                     "defaults (STRATA_OPERATOR_IMAGE_PULL_SECRETS).", maxItems=16,
                     **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})

ENV = array(obj({
    "name": string(minLength=1),
    "value": string(),
    "valueFrom": free_form("As in a container's env[].valueFrom."),
}, required=["name"]), "Extra environment variables for the container.",
    **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})

BROKER_REF = obj({
    "name": string("Name of the EventBroker.", pattern=DNS_LABEL_PATTERN, maxLength=52),
    "namespace": string("Namespace of the EventBroker; defaults to this resource's namespace.",
                        pattern=DNS_LABEL_PATTERN, maxLength=63),
}, required=["name"], description="The EventBroker this resource belongs to. Immutable.",
    rules=[rule("self == oldSelf", "brokerRef is immutable")])

CONDITION = obj({
    "type": string("CamelCase condition type: Ready, ResourceConflict, WriterConflict, ..."),
    "status": string(enum=["True", "False", "Unknown"]),
    "reason": string("CamelCase reason for the last transition."),
    "message": string("Human-readable details."),
    "lastTransitionTime": string(format="date-time"),
    "observedGeneration": integer(format="int64"),
}, required=["type", "status"])


def status_schema(properties: dict[str, Any]) -> dict[str, Any]:
    # kopf keeps handler progress in annotations, but a handler's return value and any status
    # field not declared here would be pruned: preserve unknown fields so nothing is silently lost.
    return obj({
        "observedGeneration": integer("The metadata.generation last reconciled.", format="int64"),
        "conditions": array(CONDITION, "Ready summarises; the others explain.",
                            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
        **properties,
    }, **{"x-kubernetes-preserve-unknown-fields": True})


READY_COLUMN = {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}
REASON_COLUMN = {"name": "Reason", "type": "string", "priority": 1,
                 "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


# -- EventBroker ---------------------------------------------------------------------------

EVENTBROKER_SPEC = obj({
    "replicas": integer("Number of brokers (pods), each with its own PersistentVolumeClaim; more than 1 "
                        "needs tieredStorage (docs/cluster.md).",
                        minimum=1, maximum=64, default=1),
    "image": string("Broker container image.", minLength=1),
    "imagePullPolicy": string(enum=["Always", "IfNotPresent", "Never"]),
    "imagePullSecrets": PULL_SECRETS,
    "resources": RESOURCES,
    "template": obj({
        "pod": obj({
            "metadata": obj({
                "labels": string_map("Extra labels on every broker pod (the operator's own win)."),
                "annotations": string_map("Extra annotations on every broker pod."),
            }),
            "affinity": free_form("As a pod's affinity. Absent: brokers prefer distinct nodes "
                                  "(preferred pod anti-affinity on kubernetes.io/hostname)."),
            "tolerations": array(free_form("As a pod's tolerations[]."), maxItems=32),
            "topologySpreadConstraints": array(free_form("As a pod's topologySpreadConstraints[]; a "
                                                         "constraint without labelSelector selects this "
                                                         "cluster's brokers."), maxItems=8),
            "priorityClassName": string("PriorityClass of the broker pods.", maxLength=253),
        }, description="The broker pods (Strimzi's template.pod)."),
    }, description="Customisation of what the operator creates for the brokers."),
    "storage": obj({
        "size": string("Size of each broker's volume for hot segments, e.g. 20Gi. May grow when the "
                       "StorageClass allows volume expansion (the operator then expands each broker's "
                       "PersistentVolumeClaim; otherwise condition StorageExpansionRefused and the old size "
                       "is kept); never shrinks.", pattern=QUANTITY_PATTERN, default="10Gi",
                       **{"x-kubernetes-validations": [
                           rule("quantity(self).compareTo(quantity(oldSelf)) >= 0",
                                "storage.size cannot shrink (a volume is never made smaller)")]}),
        "class": string("StorageClass of the volumes; the cluster default when absent. Immutable.",
                        **{"x-kubernetes-validations": [rule("self == oldSelf", "storage.class is immutable")]}),
    }, description="Local (hot) storage: one PVC per broker."),
    "tieredStorage": obj({
        "bucket": string("S3 bucket for closed segments.", minLength=3, maxLength=63),
        "prefix": string("Key prefix inside the bucket."),
        "endpoint": string("S3 endpoint URL; AWS when absent.", pattern=r"^https?://"),
        "region": string("S3 region.", default="us-east-1"),
        "credentialsSecret": obj({
            "name": string(pattern=DNS_LABEL_PATTERN),
            "accessKeyIdKey": string(default="AWS_ACCESS_KEY_ID"),
            "secretAccessKeyKey": string(default="AWS_SECRET_ACCESS_KEY"),
        }, required=["name"], description="Secret holding the S3 access keys; absent = the pod's own identity "
                                          "(IRSA, instance profile)."),
        "uploadInterval": string("Roll and upload an idle segment after this long.", pattern=DURATION_PATTERN),
    }, required=["bucket"], description="Offload closed segments to S3: infinite retention and replay."),
    "listeners": array(obj({
        "name": string(pattern=DNS_LABEL_PATTERN, maxLength=15),
        "port": integer(minimum=1024, maximum=65535),
        "tls": boolean("Encrypt the listener with TLS (SSL, or SASL_SSL with scram-sha-512), with the "
                       "certificate of spec.tls.", default=False),
        "authentication": string("none (PLAINTEXT, or SSL with tls), scram-sha-512 (SASL_PLAINTEXT, or SASL_SSL "
                                 "with tls; SCRAM-SHA-512/256, users from the operator's credentials Secret "
                                 "<name>-credentials and from AlterUserScramCredentials), or tls (mutual TLS: a "
                                 "client certificate signed by spec.tls's CA is required; the principal is "
                                 "User:<its CN>; needs tls: true).",
                                 enum=["none", "scram-sha-512", "tls"], default="none"),
    }, required=["name", "port"], rules=[
        rule("!has(self.authentication) || self.authentication != 'tls' || (has(self.tls) && self.tls)",
             "authentication tls (mutual TLS) needs tls: true")]),
        "Client listeners. The first is the one the operator and, unless they name another, Microservices "
        "use (for an external broker: how its bootstrapServers authenticate). Default: one `plain` listener "
        "on 9092 without authentication.",
        maxItems=4, **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        **{"x-kubernetes-validations": [rule("self.all(l, self.exists_one(m, m.port == l.port))",
                                             "listener ports must be distinct")]}),
    "tls": obj({
        "issuerRef": obj({
            "name": string("Issuer or ClusterIssuer name.", minLength=1, maxLength=253),
            "kind": string(enum=["Issuer", "ClusterIssuer"], default="Issuer"),
            "group": string(default="cert-manager.io"),
        }, required=["name"], description="A cert-manager issuer: the operator creates a cert-manager.io/v1 "
                                          "Certificate <name>-broker-tls for the broker Services' DNS names "
                                          "(its Secret, of that name, holds tls.crt, tls.key and ca.crt), and "
                                          "for each Microservice on a mutual-TLS listener a client Certificate "
                                          "<service>-kafka-tls (CN = its principal name) in the service's "
                                          "namespace (a ClusterIssuer for other namespaces)."),
        "secretName": string("An existing Secret in this namespace with tls.crt, tls.key (the brokers' "
                             "certificate, for the Services' DNS names) and ca.crt (given to clients). For an "
                             "external broker: a Secret with ca.crt only.", pattern=DNS_LABEL_PATTERN,
                             maxLength=253),
    }, description="Where the certificate of the TLS listeners comes from.", rules=[
        rule("has(self.issuerRef) != has(self.secretName)", "tls needs exactly one of issuerRef and secretName")]),
    "authorization": obj({
        "type": string("simple: the brokers enforce Kafka ACLs (authorizer.enable); the operator grants each "
                       "Microservice what it declared. none: any client may do anything.",
                       enum=["none", "simple"], default="none"),
        "superUsers": array(string(pattern=r"^User:.+$"), "Principals allowed everything, besides the operator's "
                            "own (always a super user), e.g. User:admin.", maxItems=32),
    }, description="ACLs on the brokers (Strimzi's `authorization`). Needs the first listener to authenticate; "
                   "not for an external broker (configure that broker itself)."),
    "allowedNamespaces": array(string(pattern=r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$", maxLength=63),
                               "Namespaces whose Topics, Microservices and CostReports may use this broker, "
                               "besides its own (always allowed); `*` = any. Default: its own only. When "
                               "it lists others, a Microservice's consumerGroup must start with "
                               "`<its namespace>.`.", maxItems=256, **{"x-kubernetes-list-type": "set"}),
    "config": string_map("Broker properties passed as --set key=value (e.g. num.partitions)."),
    "topicDefaults": string_map("Default topic configs for the cluster (retention.ms, segment.bytes, ...)."),
    "schemaRegistry": obj({
        "enabled": boolean("Run the schema registry (strata-registry: Confluent's Schema Registry REST API, "
                           "stored in the brokers' _schemas topic) as a Deployment and the Service "
                           "<name>-schema-registry.", default=False),
        "replicas": integer("Registry instances: every one serves reads, one (elected through the brokers) "
                            "writes.", minimum=1, maximum=5, default=1),
        "port": integer("Port of the REST API.", minimum=1, maximum=65535, default=8081),
        "url": string("A registry the operator does not run (e.g. `strata local`'s http://127.0.0.1:8081), "
                      "for an external broker: the operator registers Topic schemas there.",
                      pattern=r"^https?://[^\s]+$"),
        "tls": obj({
            "issuerRef": obj({
                "name": string("Issuer or ClusterIssuer name.", minLength=1, maxLength=253),
                "kind": string(enum=["Issuer", "ClusterIssuer"], default="Issuer"),
                "group": string(default="cert-manager.io"),
            }, required=["name"], description="A cert-manager issuer: the operator creates a Certificate "
                                              "<name>-schema-registry-tls for the registry Service's DNS names."),
            "secretName": string("An existing Secret in this namespace with tls.crt, tls.key (for the registry "
                                 "Service's DNS names) and ca.crt.", pattern=DNS_LABEL_PATTERN, maxLength=253),
        }, description="Serve the REST API over HTTPS, with the certificate from a cert-manager issuer or a "
                       "Secret (as spec.tls for the listeners).", rules=[
            rule("has(self.issuerRef) != has(self.secretName)",
                 "schemaRegistry.tls: give exactly one of issuerRef and secretName")]),
    }, description="The schema registry beside the brokers (docs/schema-registry.md). It connects to the first "
                   "listener (as its own SCRAM user strata-schema-registry when that listener authenticates); "
                   "with authorization simple its REST API requires HTTP basic auth (the brokers' SCRAM users) "
                   "and authorizes subjects by the brokers' topic ACLs."),
    "external": obj({
        "bootstrapServers": string("host:port[,host:port...] of a broker the operator does not run.",
                                   pattern=r"^[^,\s]+:[0-9]+(,[^,\s]+:[0-9]+)*$"),
    }, required=["bootstrapServers"], description="Use an existing broker (e.g. `strata local`) instead of "
                                                  "running one: no StatefulSet is created."),
}, description="A Strata broker cluster.", rules=[
    rule("!has(self.external) || (!has(self.tieredStorage) && !has(self.storage))",
         "an external broker has no storage or tieredStorage managed here"),
    rule("has(self.external) || has(self.image)", "image is required unless the broker is external"),
    rule("!has(self.replicas) || self.replicas <= 1 || has(self.tieredStorage) || has(self.external)",
         "replicas > 1 needs tieredStorage: the brokers of a cluster share partitions through the bucket",
         fieldPath=".replicas"),
    rule("!has(self.authorization) || !has(self.authorization.type) || self.authorization.type == 'none' || "
         "(has(self.listeners) && size(self.listeners) > 0 && has(self.listeners[0].authentication) && "
         "self.listeners[0].authentication == 'scram-sha-512')",
         "authorization simple needs the first listener to authenticate with scram-sha-512 (the operator's login)"),
    rule("!has(self.listeners) || !self.listeners.exists(l, has(l.tls) && l.tls) || has(self.tls)",
         "a listener with tls: true needs spec.tls (issuerRef or secretName)", fieldPath=".tls"),
    rule("!has(self.listeners) || !self.listeners.exists(l, has(l.authentication) && l.authentication == 'tls') "
         "|| has(self.external) || (has(self.tls) && has(self.tls.issuerRef))",
         "a mutual-TLS listener needs tls.issuerRef (the operator issues each Microservice's client certificate)",
         fieldPath=".tls"),
    rule("!has(self.external) || !has(self.tls) || !has(self.tls.issuerRef)",
         "an external broker's certificate is not issued here: give its CA with tls.secretName", fieldPath=".tls"),
    rule("!has(self.external) || !has(self.authorization)",
         "an external broker's authorization is configured on that broker, not here"),
    rule("!has(self.schemaRegistry) || !has(self.schemaRegistry.enabled) || !self.schemaRegistry.enabled || "
         "(!has(self.external) && (!has(self.listeners) || size(self.listeners) == 0 || "
         "!has(self.listeners[0].authentication) || self.listeners[0].authentication != 'tls'))",
         "the schema registry runs beside brokers the operator runs, on a first listener without mutual TLS",
         fieldPath=".schemaRegistry"),
])

EVENTBROKER_STATUS = status_schema({
    "bootstrapServers": string("Address clients use, e.g. my-broker-bootstrap.ns.svc:9092."),
    "storageSize": string("The size the brokers' volumes were made or expanded to (spec.storage.size once "
                          "applied)."),
    "replicas": integer(),
    "readyReplicas": integer(),
    "authorizer": boolean("Whether the broker enforces ACLs (it answers CreateAcls)."),
    "schemaRegistryUrl": string("Where the schema registry the operator runs answers (spec.schemaRegistry)."),
})


# -- Topic ---------------------------------------------------------------------------------

def NAMESPACE_LIST(description: str) -> dict[str, Any]:  # noqa: N802 - a schema constant's maker
    return array(string(pattern=r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$", maxLength=63), description,
                 maxItems=256, **{"x-kubernetes-list-type": "set"})


# Internal and reserved topics: __consumer_offsets, __transaction_state, Strata's __meta, anything
# starting `__`, and _schemas. The broker manages them; no Topic or Microservice may name them.
NOT_RESERVED = "!{v}.startsWith('__') && {v} != '_schemas'"

TOPIC_SPEC = obj({
    "brokerRef": BROKER_REF,
    "topicName": string("Kafka topic name; defaults to metadata.name. Immutable.", pattern=TOPIC_NAME_PATTERN,
                        **{"x-kubernetes-validations": [
                            rule("self != '.' && self != '..'", "'.' and '..' are not topic names"),
                            rule(NOT_RESERVED.format(v="self"), "internal and reserved topics (__*, _schemas) "
                                 "are managed by the broker, not by a Topic")]}),
    "partitions": integer("Number of partitions; may grow, never shrink. Absent: 1 for a new topic, an "
                          "adopted topic keeps its own.", minimum=1, maximum=10000,
                          **{"x-kubernetes-validations": [
                              rule("self >= oldSelf", "partitions can be increased, never decreased",
                                   reason="FieldValueForbidden")]}),
    "retention": string("How long records are kept (in S3 when tiered): a duration such as 7d, 12h, "
                        "or `forever`.", pattern=RETENTION_PATTERN),
    "retentionBytes": string("Size limit per partition, e.g. 10Gi, or `forever`.", pattern=BYTES_PATTERN),
    "localRetention": string("How long closed segments stay on the broker's disk (hot) once in S3.",
                             pattern=DURATION_PATTERN),
    "localRetentionBytes": string("Hot bytes per partition kept on disk once in S3.", pattern=BYTES_PATTERN),
    "cleanupPolicy": string("delete (an event stream) or compact (an entity stream: the latest value "
                            "per key). Absent: the cluster default for a new topic; an adopted topic "
                            "keeps its own.", enum=["delete", "compact", "compact,delete"]),
    "durability": string("disk: acks=all answers after fsync; s3: after the batch is in S3. Absent: the "
                         "cluster default (disk) for a new topic; an adopted topic keeps its own.",
                         enum=["disk", "s3"]),
    "tiered": boolean("Offload closed segments to S3 (remote.storage.enable); needs a tiered broker."),
    "config": {**string_map("Any other topic config, passed through (Kafka names: segment.bytes, "
                            "max.message.bytes, ...). A key present is enforced; an absent key is left "
                            "as found on the broker; typed fields cannot be set here."),
               "x-kubernetes-validations": [rule(
                   "self.all(k, !(k in " + repr(TYPED_TOPIC_CONFIGS) + "))",
                   "retention, cleanup policy, durability and tiering have their own fields; do not set "
                   "them in config")]},
    "team": string("Owning team (for the cost report and the catalogue).", pattern=DNS_LABEL_PATTERN),
    "allowedConsumers": NAMESPACE_LIST("Namespaces besides this one whose Microservices may read the topic "
                                       "(`*` = any). Default: this namespace only."),
    "allowedProducers": NAMESPACE_LIST("Namespaces besides this one whose Microservices may write the topic "
                                       "(`*` = any; still one writer). Default: this namespace only."),
    "deletionPolicy": string("What deleting this resource does to the Kafka topic: Retain keeps it "
                             "(and its data); Delete deletes it and its S3 objects.",
                             enum=["Retain", "Delete"], default="Retain"),
    "schema": obj({
        "type": string("Schema type.", enum=["AVRO", "JSON", "PROTOBUF"], default="AVRO"),
        "compatibility": string("The subject's compatibility level (absent: the registry's default).",
                                enum=["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
                                      "FULL", "FULL_TRANSITIVE"]),
        "schema": string("The schema itself (Avro or JSON Schema as JSON text, or a .proto file).",
                         maxLength=262144),
        "configMapRef": obj({"name": string(pattern=DNS_LABEL_PATTERN), "key": string(maxLength=253)},
                            required=["name", "key"], description="Read the schema from this ConfigMap key "
                                                                  "(in the Topic's namespace)."),
        "references": array(obj({"name": string(maxLength=1024), "subject": string(maxLength=1024),
                                 "version": integer(minimum=1)}, required=["name", "subject", "version"]),
                            "Schemas this one references (Confluent references).", maxItems=64),
        "key": boolean("Register the record key's schema (subject <topic>-key) instead of the value's "
                       "(<topic>-value).", default=False),
    }, description="The topic's record schema: the operator registers it in the EventBroker's schema "
                   "registry under <topic>-value (TopicNameStrategy) and reports the version and id.",
        rules=[rule("has(self.schema) != has(self.configMapRef)",
                    "give the schema inline (schema) or from a ConfigMap (configMapRef), exactly one")]),
}, required=["brokerRef", "team"], description="A Kafka topic managed by the operator (Kubernetes -> broker).",
    rules=[
        rule("!has(self.localRetention) || !has(self.retention) || self.retention == 'forever' "
             "|| has(self.tiered) && self.tiered",
             "localRetention only applies to tiered topics (set tiered: true)"),
        rule("!has(self.durability) || self.durability != 's3' || (has(self.tiered) && self.tiered)",
             "durability s3 needs tiered: true"),
    ])

# On the whole object (where CEL sees metadata.name): the Kafka topic a Topic names may not change,
# whether spec.topicName is changed, added or removed (a rule on the optional field itself only runs
# when both the old and the new object have it). Adding topicName equal to metadata.name is no change.
TOPIC_RULES = [
    rule("(has(self.spec.topicName) ? self.spec.topicName : self.metadata.name) == "
         "(has(oldSelf.spec.topicName) ? oldSelf.spec.topicName : oldSelf.metadata.name)",
         "topicName is immutable: it cannot be changed, added or removed (create a new Topic instead)",
         fieldPath=".spec.topicName", reason="FieldValueInvalid"),
]

TOPIC_STATUS = status_schema({
    "topicName": string(),
    "topicId": string("The broker's topic id (changes if the topic is re-created)."),
    "managedConfigs": array(string(), "The topic configs this resource enforces (the ones its spec names); "
                            "a key that leaves the spec is reset to the cluster default once."),
    "partitions": integer(),
    "schemaSubject": string("The subject spec.schema is registered under."),
    "schemaVersion": integer("Its version in the subject."),
    "schemaId": integer("Its global schema id (what serialized records carry)."),
    "lastSyncTime": string(format="date-time"),
})


# -- Microservice --------------------------------------------------------------------------

TOPIC_LIST = array(string(pattern=TOPIC_NAME_PATTERN, maxLength=249), maxItems=256,
                   **{"x-kubernetes-list-type": "set"})

MICROSERVICE_SPEC = obj({
    "brokerRef": BROKER_REF,
    "team": string("Owning team: its services' usage is billed to it.", pattern=DNS_LABEL_PATTERN),
    "image": string("Application container image. Absent: a credentials-only service (Secret and ACLs, no "
                    "Deployment), for an app deployed by other tools.", minLength=1),
    "imagePullSecrets": PULL_SECRETS,
    "replicas": integer("Replicas of the Deployment. Absent: the operator leaves them to whoever scales it (an "
                        "HPA, KEDA); a new Deployment starts with 1.", minimum=0, maximum=1000),
    "command": array(string()),
    "args": array(string()),
    "env": ENV,
    "resources": RESOURCES,
    "produces": {**TOPIC_LIST, "description": "Topics this service writes. One writer per topic: the "
                                              "Microservice that declared it first (status.writeClaims) "
                                              "keeps Write while it declares it; later ones wait in order."},
    "consumes": {**TOPIC_LIST, "description": "Topics this service reads."},
    "listener": string("The EventBroker listener this service connects to (its Secret's bootstrap address, "
                       "security protocol and certificates); default: the first.", pattern=DNS_LABEL_PATTERN,
                       maxLength=15),
    "consumerGroup": string("Consumer group id; defaults to `<namespace>.<name>`. On an EventBroker shared "
                            "with other namespaces it must start with `<namespace>.`.",
                            pattern=TOPIC_NAME_PATTERN),
}, required=["brokerRef", "team"], description="A team's event-driven microservice.", rules=[
    rule("!has(self.produces) || self.produces.all(t, t.matches('" + TOPIC_NAME_PATTERN + "') && t != '.' "
         "&& t != '..')", "produces must name topics (1-249 of a-z A-Z 0-9 . _ -)", fieldPath=".produces"),
    rule("!has(self.consumes) || self.consumes.all(t, t.matches('" + TOPIC_NAME_PATTERN + "') && t != '.' "
         "&& t != '..')", "consumes must name topics (1-249 of a-z A-Z 0-9 . _ -)", fieldPath=".consumes"),
    rule("(!has(self.produces) || self.produces.all(t, " + NOT_RESERVED.format(v="t") + ")) && "
         "(!has(self.consumes) || self.consumes.all(t, " + NOT_RESERVED.format(v="t") + "))",
         "internal and reserved topics (__*, _schemas) cannot be produced or consumed by a Microservice"),
    rule("!has(self.consumerGroup) || (has(self.consumes) && size(self.consumes) > 0)",
         "consumerGroup is only meaningful for a service that consumes", fieldPath=".consumerGroup"),
])

MICROSERVICE_STATUS = status_schema({
    "principal": string("The broker principal, e.g. User:orders.order-service."),
    "secretName": string("Secret with bootstrap settings and SCRAM credentials."),
    "replicas": integer(),
    "readyReplicas": integer(),
    "availableReplicas": integer("The Deployment's available replicas; Ready needs all of spec.replicas."),
    "permissions": array(obj({
        "resourceType": string(enum=["topic", "group"]),
        "name": string(),
        "operations": array(string()),
    }), "What the broker grants this service's principal."),
    "deniedWrites": array(string(), "Produced topics whose writer is another service."),
    "schemaSubjects": array(string(), "Schema registry subjects of the topics it may write (TopicNameStrategy: "
                            "<topic>-key and <topic>-value)."),
    "writeClaims": array(obj({
        "topic": string(),
        "since": string("When this service first declared it produces the topic.", format="date-time"),
        "writer": boolean("Whether this service holds Write on it."),
    }), "One per produced topic: the claim that decides the single writer (first declared, first served)."),
    "observed": obj({
        "window": string("The span the counts cover, ending at the operator's last read of the usage records."),
        "topics": array(obj({
            "topic": string(),
            "direction": string("produce (Produce requests) or consume (Fetch requests).",
                                enum=["produce", "consume"]),
            "bytes": integer("Bytes produced or fetched in the window.", format="int64"),
            "records": integer("Records produced or fetched in the window.", format="int64"),
            "declared": boolean("Whether spec.produces/spec.consumes lists the topic (false: observed only)."),
            "lastSeen": string("End of the last metering window with a request (absent: none in the records "
                               "read).", format="date-time"),
        }, required=["topic", "direction", "bytes", "records", "declared"]),
            "Per topic and direction: declared topics (0 bytes if idle) and observed ones."),
    }, description="What the brokers' metering saw this service produce and consume lately (usage records in "
                   "the bucket; docs/topology.md)."),
})


# -- CostReport ----------------------------------------------------------------------------

MONEY = string(pattern=r"^[0-9]+(\.[0-9]+)?$")
COSTREPORT_PERIODS = ["daily", "weekly", "monthly"]
COSTREPORT_SPEC = obj({
    "brokerRef": BROKER_REF,
    "period": string("Billing period: the current UTC day, ISO week (Monday first) or calendar month, reported "
                     "to date; when a period ends its final report is written once more.",
                     enum=COSTREPORT_PERIODS, default="monthly"),
    "interval": string("How often the report is recomputed, e.g. 15m or 1h; default: the operator's "
                       "STRATA_OPERATOR_COSTREPORT_INTERVAL (1h).", pattern=DURATION_PATTERN),
    "currency": string(pattern=r"^[A-Z]{3}$", default="USD"),
    "priceModelRef": obj({
        "name": string("ConfigMap in this resource's namespace.", pattern=DNS_LABEL_PATTERN, maxLength=253),
        "key": string("Key holding the price file (YAML, docs/billing.md).", default="prices.yaml"),
    }, required=["name"], description="A price file in a ConfigMap (the chart ships the defaults as one); "
                                      "`prices`, `sharedCostPolicy`, `weights` and `currency` override it."),
    "prices": obj({
        "s3GbMonth": MONEY, "s3PutPer1000": MONEY, "s3GetPer1000": MONEY,
        "diskGbMonth": MONEY, "cpuHour": MONEY, "ramGbHour": MONEY, "networkGb": MONEY,
    }, description="Price model; unset prices use the built-in defaults (documented with sources)."),
    "sharedCostPolicy": string("How the platform's shared cost (the tax) is allocated.",
                               enum=["proportional", "even", "weighted"], default="proportional"),
    "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                "description": "Team -> weight, for sharedCostPolicy: weighted."},
    "usageSource": obj({
        "bucket": string("Bucket the brokers write usage records to.", minLength=3, maxLength=63),
        "prefix": string("Key prefix inside the bucket (the brokers' tiered.s3.prefix)."),
        "endpoint": string("S3 endpoint URL; AWS when absent.", pattern=r"^https?://"),
        "region": string("S3 region."),
        "clusterId": string("The brokers' cluster.id (usage lives under clusters/<clusterId>/usage/).",
                            minLength=1),
        "credentialsSecret": obj({
            "name": string(pattern=DNS_LABEL_PATTERN),
            "accessKeyIdKey": string(default="AWS_ACCESS_KEY_ID"),
            "secretAccessKeyKey": string(default="AWS_SECRET_ACCESS_KEY"),
        }, required=["name"], description="Secret in this namespace with S3 keys; absent = the broker's "
                                          "tieredStorage.credentialsSecret, else the operator's own identity."),
    }, description="Where usage is read and reports are written. Each field defaults to the EventBroker's "
                   "(tieredStorage, cluster.id `<namespace>.<name>`); needed for an external broker."),
}, required=["brokerRef"], description="A per-team cost report (the microservice tax).", rules=[
    rule("(has(self.sharedCostPolicy) && self.sharedCostPolicy == 'weighted') == has(self.weights)",
         "weights are required with sharedCostPolicy weighted, and only then"),
])

COSTREPORT_STATUS = status_schema({
    "period": string("The period reported, e.g. 2025-03, 2025-W11, 2025-03-14."),
    "periodStart": string(format="date-time"),
    "periodEnd": string("End of the period (exclusive); the report covers it up to lastComputed.",
                        format="date-time"),
    "lastComputed": string(format="date-time"),
    "currency": string(),
    "total": string("Exactly the sum of teams[].total."),
    "sharedCost": string("The platform tax, included in the teams' totals."),
    "teams": array(obj({
        "team": string("A team, `unowned` (usage nobody owns) or `idle` (provisioned, unused disk)."),
        "direct": string(), "shared": string(), "total": string(),
        "producedBytes": integer(format="int64"), "fetchedBytes": integer(format="int64"),
    })),
    "reports": obj({"json": string(), "html": string(), "csv": string()},
                   description="The full report (OpenCost-shaped JSON, HTML, FOCUS 1.2 CSV) in the bucket."),
    "warnings": array(string(), "What the reader and allocator noticed (first 20)."),
})


# -- CRDs ----------------------------------------------------------------------------------

KINDS: dict[str, dict[str, Any]] = {
    "EventBroker": {"plural": "eventbrokers", "short": ["sbr"], "spec": EVENTBROKER_SPEC,
                    "status": EVENTBROKER_STATUS, "columns": [
                        READY_COLUMN,
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                        {"name": "Ready-Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Bootstrap", "type": "string", "jsonPath": ".status.bootstrapServers"},
                        REASON_COLUMN, AGE_COLUMN]},
    "Topic": {"plural": "topics", "short": ["stp"], "spec": TOPIC_SPEC, "status": TOPIC_STATUS,
              "rules": TOPIC_RULES, "columns": [
        READY_COLUMN,
        {"name": "Topic", "type": "string", "jsonPath": ".status.topicName"},
        {"name": "Partitions", "type": "integer", "jsonPath": ".status.partitions"},
        {"name": "Retention", "type": "string", "jsonPath": ".spec.retention"},
        {"name": "Team", "type": "string", "jsonPath": ".spec.team"},
        {"name": "Broker", "type": "string", "jsonPath": ".spec.brokerRef.name", "priority": 1},
        REASON_COLUMN, AGE_COLUMN]},
    "Microservice": {"plural": "microservices", "short": ["sms"], "spec": MICROSERVICE_SPEC,
                     "status": MICROSERVICE_STATUS, "columns": [
                         READY_COLUMN,
                         {"name": "Team", "type": "string", "jsonPath": ".spec.team"},
                         {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                         {"name": "Ready-Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
                         {"name": "Writer-Conflict", "type": "string",
                          "jsonPath": '.status.conditions[?(@.type=="WriterConflict")].status'},
                         REASON_COLUMN, AGE_COLUMN]},
    "CostReport": {"plural": "costreports", "short": ["scr"], "spec": COSTREPORT_SPEC,
                   "status": COSTREPORT_STATUS, "columns": [
                       READY_COLUMN,
                       {"name": "Period", "type": "string", "jsonPath": ".status.period"},
                       {"name": "Total", "type": "string", "jsonPath": ".status.total"},
                       {"name": "Currency", "type": "string", "jsonPath": ".status.currency"},
                       {"name": "Computed", "type": "date", "jsonPath": ".status.lastComputed"},
                       {"name": "Broker", "type": "string", "jsonPath": ".spec.brokerRef.name", "priority": 1},
                       REASON_COLUMN, AGE_COLUMN]},
}


def crd(kind: str) -> dict[str, Any]:
    info = KINDS[kind]
    schema = obj({
        "apiVersion": string(), "kind": string(), "metadata": {"type": "object"},
        "spec": info["spec"], "status": info["status"],
    }, required=["spec"], description=info["spec"].get("description", ""), rules=info.get("rules"))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info['plural']}.{GROUP}",
                     "labels": {"app.kubernetes.io/part-of": "strata"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": info["plural"],
                      "singular": kind.lower(), "shortNames": info["short"], "categories": CATEGORIES},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": info["columns"],
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """file name -> CRD, e.g. {'strata.dev_topics.yaml': {...}}."""
    return {f"{GROUP}_{KINDS[k]['plural']}.yaml": crd(k) for k in KINDS}


HEADER = "# Generated by `python -m strata_operator.crds` from strata_operator/crds.py. Do not edit.\n"


def render(kind_crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(kind_crd, sort_keys=False, width=100, allow_unicode=True)


def rendered() -> dict[str, str]:
    return {name: render(c) for name, c in all_crds().items()}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text)
        out.append(path)
    return out


def diff(directory: Path) -> list[str]:
    """Differences between `directory` and the rendered CRDs (empty when they agree)."""
    problems: list[str] = []
    expected = rendered()
    present = {p.name for p in directory.glob("*.yaml")} if directory.is_dir() else set()
    for name, text in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text() != text:
            problems.append("".join(difflib.unified_diff(path.read_text().splitlines(True), text.splitlines(True),
                                                         str(path), "rendered", n=1)))
    for extra in sorted(present - set(expected)):
        problems.append(f"{directory / extra}: not rendered by strata_operator.crds")
    return problems


def default_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "crds"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strata_operator.crds", description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=default_dir())
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        problems = diff(args.directory)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for path in write(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
