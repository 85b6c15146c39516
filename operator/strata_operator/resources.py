"""Pure functions: a custom resource (a dict, as the API server returns it) -> Kubernetes objects.

No I/O here: the handlers apply what these return, and tests validate it against the
Kubernetes OpenAPI schemas without a cluster.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from strata_contract.scram import FILE_KEY

from .crds import API_VERSION

BROKER_PORT = 9092
DATA_DIR = "/var/lib/strata"
CONFIG_DIR = "/etc/strata"
CREDENTIALS_DIR = "/etc/strata/credentials"
CREDENTIALS_KEY = FILE_KEY  # the key of the Secret <name>-credentials (strata_contract.scram)
TLS_DIR = "/etc/strata/tls"  # the brokers' certificate Secret: tls.crt, tls.key, ca.crt
CLIENT_TLS_DIR = "/etc/strata/kafka"  # in a Microservice's pod: ca.crt (and tls.crt, tls.key for mutual TLS)
CA_PEM_KEY = "KAFKA_SSL_CA_PEM"  # the CA in a Microservice's Secret (librdkafka's ssl.ca.pem)
CERT_MANAGER_API = "cert-manager.io/v1"
SASL_MECHANISMS = "SCRAM-SHA-512,SCRAM-SHA-256"  # PLAIN is for local use only: never on a managed broker
DEFAULT_OPERATOR_USER = "strata-operator"
MANAGED_BY = "strata-operator"


def labels(cr: dict[str, Any], component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "strata",
        "app.kubernetes.io/instance": cr["metadata"]["name"],
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "strata",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(cr: dict[str, Any], component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": cr["metadata"]["name"], "app.kubernetes.io/component": component}


def owner_reference(cr: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": cr.get("apiVersion", API_VERSION), "kind": cr["kind"], "name": cr["metadata"]["name"],
            "uid": cr["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def meta(cr: dict[str, Any], name: str, component: str, **extra: Any) -> dict[str, Any]:
    out = {"name": name, "namespace": cr["metadata"]["namespace"], "labels": labels(cr, component),
           "ownerReferences": [owner_reference(cr)]}
    out.update(extra)
    return out


def pull_secrets(spec: dict[str, Any], defaults: list[str] | tuple[str, ...] = ()) -> list[dict[str, str]]:
    """A pod's imagePullSecrets: the operator's defaults (STRATA_OPERATOR_IMAGE_PULL_SECRETS), then the
    resource's own spec.imagePullSecrets, without duplicates."""
    names: list[str] = []
    for name in [*defaults, *(s.get("name", "") for s in spec.get("imagePullSecrets") or [])]:
        if name and name not in names:
            names.append(name)
    return [{"name": n} for n in names]


RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                  "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}


# -- EventBroker ---------------------------------------------------------------------------

def broker_names(name: str) -> dict[str, str]:
    return {"statefulset": f"{name}-broker", "headless": f"{name}-brokers", "bootstrap": f"{name}-bootstrap",
            "configmap": f"{name}-config", "pdb": f"{name}-broker", "serviceaccount": f"{name}-broker",
            "credentials": f"{name}-credentials", "tls": f"{name}-broker-tls"}


def bootstrap_servers(broker: dict[str, Any]) -> str:
    """Where clients (and the operator) reach this EventBroker."""
    spec = broker.get("spec", {})
    if spec.get("external"):
        return spec["external"]["bootstrapServers"]
    name, ns = broker["metadata"]["name"], broker["metadata"]["namespace"]
    return f"{broker_names(name)['bootstrap']}.{ns}.svc:{client_port(spec)}"


def listeners(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The EventBroker's listeners; the first is the one clients (Microservices) and the operator use."""
    return list(spec.get("listeners") or [{"name": "plain", "port": BROKER_PORT}])


def client_port(spec: dict[str, Any]) -> int:
    return int(listeners(spec)[0]["port"])


def authentication(spec: dict[str, Any]) -> str:
    return listeners(spec)[0].get("authentication", "none")


def listener_protocol(listener: dict[str, Any]) -> str:
    """PLAINTEXT, SASL_PLAINTEXT (scram-sha-512), SSL (tls; mutual with authentication tls) or SASL_SSL."""
    sasl = listener.get("authentication", "none") == "scram-sha-512"
    if listener.get("tls") or listener.get("authentication") == "tls":
        return "SASL_SSL" if sasl else "SSL"
    return "SASL_PLAINTEXT" if sasl else "PLAINTEXT"


def mutual_tls(listener: dict[str, Any]) -> bool:
    return listener.get("authentication") == "tls"


def uses_sasl(spec: dict[str, Any]) -> bool:
    """Some listener authenticates with SCRAM: the brokers get a credentials file (and SCRAM mechanisms)."""
    return any(listener_protocol(lst).startswith("SASL_") for lst in listeners(spec))


def uses_tls(spec: dict[str, Any]) -> bool:
    """Some listener is encrypted: the brokers mount the certificate Secret (tls_secret_name)."""
    return any(listener_protocol(lst) in ("SSL", "SASL_SSL") for lst in listeners(spec))


def tls_secret_name(broker: dict[str, Any]) -> str:
    """The Secret with the brokers' tls.crt, tls.key and ca.crt: spec.tls.secretName, else the one
    cert-manager writes for the Certificate <name>-broker-tls."""
    tls = broker["spec"].get("tls") or {}
    return tls.get("secretName") or broker_names(broker["metadata"]["name"])["tls"]


def client_listener(broker: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The listener a Microservice uses: the one named (spec.listener), else the first. KeyError when the
    EventBroker has no listener of that name."""
    if not name:
        return listeners(broker.get("spec", {}))[0]
    for lst in listeners(broker.get("spec", {})):
        if lst["name"] == name:
            return lst
    raise KeyError(name)


def listener_bootstrap(broker: dict[str, Any], listener: dict[str, Any]) -> str:
    """bootstrap.servers for one listener: the bootstrap Service on its port (an external broker has only
    its bootstrapServers, for the first listener)."""
    spec = broker.get("spec", {})
    if spec.get("external"):
        return spec["external"]["bootstrapServers"]
    name, ns = broker["metadata"]["name"], broker["metadata"]["namespace"]
    return f"{broker_names(name)['bootstrap']}.{ns}.svc:{int(listener['port'])}"


def broker_dns_names(broker: dict[str, Any]) -> list[str]:
    """What the brokers' certificate must name: the bootstrap Service and every pod of the headless one."""
    names = broker_names(broker["metadata"]["name"])
    ns = broker["metadata"]["namespace"]
    out = []
    for svc, prefix in ((names["bootstrap"], ""), (names["headless"], "*.")):
        out += [f"{prefix}{svc}.{ns}.svc", f"{prefix}{svc}.{ns}.svc.cluster.local"]
    return [names["bootstrap"], f"{names['bootstrap']}.{ns}", *out]


def issuer_ref(broker: dict[str, Any]) -> dict[str, str]:
    ref = (broker["spec"].get("tls") or {})["issuerRef"]
    return {"name": ref["name"], "kind": ref.get("kind", "Issuer"), "group": ref.get("group", "cert-manager.io")}


def broker_certificate(broker: dict[str, Any]) -> dict[str, Any]:
    """The cert-manager Certificate of the brokers' TLS listeners (spec.tls.issuerRef): a server
    certificate for the Services' DNS names, written to the Secret <name>-broker-tls, that also
    authenticates a client (a broker presents it to another's mutual-TLS listener for inter-broker
    requests). Its subject has no common name, so it never maps to a principal."""
    names = broker_names(broker["metadata"]["name"])
    return {"apiVersion": CERT_MANAGER_API, "kind": "Certificate", "metadata": meta(broker, names["tls"], "broker"),
            "spec": {"secretName": names["tls"], "issuerRef": issuer_ref(broker), "dnsNames": broker_dns_names(broker),
                     "usages": ["server auth", "client auth", "digital signature", "key encipherment"],
                     "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                     "secretTemplate": {"labels": labels(broker, "broker")}}}


def authorizer(spec: dict[str, Any]) -> bool:
    return (spec.get("authorization") or {}).get("type", "none") == "simple"


def super_users(spec: dict[str, Any], operator_user: str = DEFAULT_OPERATOR_USER) -> list[str]:
    """The operator's own principal first, then spec.authorization.superUsers (no duplicates)."""
    out = [f"User:{operator_user}"]
    for user in (spec.get("authorization") or {}).get("superUsers") or []:
        if user not in out:
            out.append(user)
    return out


def broker_properties(broker: dict[str, Any], operator_user: str = DEFAULT_OPERATOR_USER) -> dict[str, str]:
    """The `--set key=value` settings of every broker of this cluster (rendered into the ConfigMap).

    Listeners: one per spec.listeners entry, named after it (upper-cased) with its protocol in
    listener.security.protocol.map (each pod advertises its own DNS name on the command line).
    A listener with authentication adds the SCRAM mechanisms and the credentials file the operator
    maintains; authorization `simple` turns the authorizer on with the operator as a super user."""
    spec = broker["spec"]
    ns, name = broker["metadata"]["namespace"], broker["metadata"]["name"]
    from . import registry_objects

    props: dict[str, str] = {"cluster.id": f"{ns}.{name}", "auto.create.topics.enable": "false"}
    props["listeners"] = ",".join(f"{lst['name'].upper()}://0.0.0.0:{lst['port']}" for lst in listeners(spec))
    props["listener.security.protocol.map"] = ",".join(
        f"{lst['name'].upper()}:{listener_protocol(lst)}" for lst in listeners(spec))
    if uses_sasl(spec):
        props["sasl.enabled.mechanisms"] = SASL_MECHANISMS
        props["sasl.credentials.file"] = f"{CREDENTIALS_DIR}/{CREDENTIALS_KEY}"
    if uses_tls(spec):
        props["ssl.certificate.location"] = f"{TLS_DIR}/tls.crt"
        props["ssl.key.location"] = f"{TLS_DIR}/tls.key"
        props["ssl.ca.location"] = f"{TLS_DIR}/ca.crt"
        props["ssl.client.auth"] = "none"
        mtls = [lst for lst in listeners(spec) if mutual_tls(lst)]
        if mtls:
            props["ssl.client.auth.listener.map"] = ",".join(f"{lst['name'].upper()}:required" for lst in mtls)
    if authorizer(spec):
        props["authorizer.enable"] = "true"
        props["super.users"] = ";".join(super_users(spec, operator_user))
    tiered = spec.get("tieredStorage")
    if tiered:
        props["tiered.s3.bucket"] = tiered["bucket"]
        props["tiered.s3.prefix"] = tiered.get("prefix", "")
        props["tiered.s3.region"] = tiered.get("region", "us-east-1")
        if tiered.get("endpoint"):
            props["tiered.s3.endpoint"] = tiered["endpoint"]
        if tiered.get("uploadInterval"):
            from .durations import duration_ms

            props["tiered.upload.interval.ms"] = str(duration_ms(tiered["uploadInterval"]))
    props.update(registry_objects.broker_properties(broker, props))  # spec.schemaRegistry (registry_objects.py)
    props.update(spec.get("topicDefaults") or {})
    props.update(spec.get("config") or {})
    if uses_tls(spec):
        # After spec.config, which cannot undo it: no client certificate may stand for the operator.
        reserved = [p for p in props.get("ssl.reserved.principals", "").split(";") if p.strip()]
        props["ssl.reserved.principals"] = ";".join(dict.fromkeys([f"User:{operator_user}", *reserved]))
    from .cluster import kube_objects

    if kube_objects.clustered(broker):  # placement from the ConfigMap the operator's controller publishes
        props["cluster.placement.file"] = kube_objects.PLACEMENT_FILE
    return dict(sorted(props.items()))


def broker_configmap(broker: dict[str, Any], operator_user: str = DEFAULT_OPERATOR_USER) -> dict[str, Any]:
    names = broker_names(broker["metadata"]["name"])
    text = "".join(f"{k}={v}\n" for k, v in broker_properties(broker, operator_user).items())
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(broker, names["configmap"], "broker"),
            "data": {"broker.properties": text}}


def broker_serviceaccount(broker: dict[str, Any]) -> dict[str, Any]:
    names = broker_names(broker["metadata"]["name"])
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(broker, names["serviceaccount"], "broker"), "automountServiceAccountToken": False}


def broker_credentials_secret(broker: dict[str, Any], users_file: str) -> dict[str, Any]:
    """The brokers' credentials file (sasl.credentials.file), maintained by the operator: its own
    admin user as SCRAM hashes (scram.credentials_file). Microservices' users are not here: they
    are set with AlterUserScramCredentials. The brokers re-read it when the kubelet updates the volume."""
    names = broker_names(broker["metadata"]["name"])
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": meta(broker, names["credentials"], "broker"), "stringData": {CREDENTIALS_KEY: users_file}}


def port_names(spec: dict[str, Any]) -> list[str]:
    """Container/Service port names per listener: `kafka` for the first (the probes use it), then
    the listener's name."""
    out = ["kafka"]
    for lst in listeners(spec)[1:]:
        out.append(lst["name"] if lst["name"] not in out else f"{lst['name'][:13]}-2")
    return out


def broker_services(broker: dict[str, Any]) -> list[dict[str, Any]]:
    names = broker_names(broker["metadata"]["name"])
    ports = [{"name": pname, "port": int(lst["port"]), "targetPort": pname, "protocol": "TCP"}
             for pname, lst in zip(port_names(broker["spec"]), listeners(broker["spec"]), strict=True)]
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": meta(broker, names["headless"], "broker"),
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                         "selector": selector(broker, "broker"), "ports": ports}}
    client = {"apiVersion": "v1", "kind": "Service", "metadata": meta(broker, names["bootstrap"], "broker"),
              "spec": {"type": "ClusterIP", "selector": selector(broker, "broker"), "ports": ports}}
    return [headless, client]


def broker_pdb(broker: dict[str, Any]) -> dict[str, Any]:
    names = broker_names(broker["metadata"]["name"])
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": meta(broker, names["pdb"], "broker"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(broker, "broker")}}}


def broker_pod_template(broker: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """From spec.template.pod: (extra pod spec fields, extra pod metadata). Without an affinity the
    brokers prefer distinct nodes; a topology spread constraint without labelSelector gets this
    cluster's broker selector."""
    pod = ((broker["spec"].get("template") or {}).get("pod")) or {}
    match = selector(broker, "broker")
    extra: dict[str, Any] = {"affinity": pod.get("affinity") or {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": match}, "topologyKey": "kubernetes.io/hostname"}}]}}}
    if pod.get("tolerations"):
        extra["tolerations"] = list(pod["tolerations"])
    if pod.get("topologySpreadConstraints"):
        extra["topologySpreadConstraints"] = [{"labelSelector": {"matchLabels": match}, **c}
                                              for c in pod["topologySpreadConstraints"]]
    if pod.get("priorityClassName"):
        extra["priorityClassName"] = pod["priorityClassName"]
    meta = pod.get("metadata") or {}
    return extra, {k: dict(meta[k]) for k in ("labels", "annotations") if meta.get(k)}


def broker_statefulset(broker: dict[str, Any], operator_user: str = DEFAULT_OPERATOR_USER,
                       default_pull_secrets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """One pod and one PVC per broker. Rolling updates go one broker at a time (maxUnavailable 1),
    each waiting for the previous pod's readiness (the TCP readiness probe on the Kafka port)."""
    spec = broker["spec"]
    name, ns = broker["metadata"]["name"], broker["metadata"]["namespace"]
    names = broker_names(name)
    props = broker_properties(broker, operator_user)
    config_hash = hashlib.sha256(json.dumps(props, sort_keys=True).encode()).hexdigest()[:16]
    # The broker id is the pod's ordinal; it advertises its stable per-pod DNS name on every listener
    # (the listeners themselves are in broker.properties).
    advertise = "".join(
        ' --advertise "' + lst["name"].upper() + '://${HOSTNAME}.' + names["headless"] + "." + ns + ".svc:"
        + str(lst["port"]) + '"' for lst in listeners(spec))
    script = (
        'set -eu; id="${HOSTNAME##*-}"; '
        'set -- --data-dir ' + DATA_DIR + advertise + ' --broker-id "$id"; '
        'while IFS= read -r kv; do [ -n "$kv" ] && set -- "$@" --set "$kv"; done < ' + CONFIG_DIR
        + '/broker.properties; exec strata-broker "$@"'
    )
    env: list[dict[str, Any]] = []
    tiered = spec.get("tieredStorage") or {}
    secret = tiered.get("credentialsSecret")
    if secret:
        env += [
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
                "name": secret["name"], "key": secret.get("accessKeyIdKey", "AWS_ACCESS_KEY_ID")}}},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
                "name": secret["name"], "key": secret.get("secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY")}}},
        ]
    if tiered.get("region"):
        env.append({"name": "AWS_DEFAULT_REGION", "value": tiered["region"]})
    container: dict[str, Any] = {
        "name": "broker",
        "image": spec["image"],
        "command": ["/bin/sh", "-c", script],
        "ports": [{"name": pname, "containerPort": int(lst["port"]), "protocol": "TCP"}
                  for pname, lst in zip(port_names(spec), listeners(spec), strict=True)],
        "env": env,
        "readinessProbe": {"tcpSocket": {"port": "kafka"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "kafka"}, "initialDelaySeconds": 30, "periodSeconds": 10,
                          "failureThreshold": 6},
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR},
                         {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": RESTRICTED_CONTAINER,
    }
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": names["configmap"]}},
                                     {"name": "tmp", "emptyDir": {}}]
    if uses_sasl(spec):
        container["volumeMounts"].append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
        volumes.append({"name": "credentials", "secret": {"secretName": names["credentials"],
                                                          "defaultMode": 0o440}})
    if uses_tls(spec):
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret_name(broker), "defaultMode": 0o440,
                                                  "items": [{"key": k, "path": k}
                                                            for k in ("tls.crt", "tls.key", "ca.crt")]}})
    from .cluster import kube_objects

    if kube_objects.clustered(broker):
        volume, mount = kube_objects.placement_volume(broker)
        container["volumeMounts"].append(mount)
        volumes.append(volume)
    if spec.get("imagePullPolicy"):
        container["imagePullPolicy"] = spec["imagePullPolicy"]
    pod_pull_secrets = pull_secrets(spec, default_pull_secrets)
    pod_spec_extra, pod_meta = broker_pod_template(broker)
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    storage = spec.get("storage") or {}
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": storage.get("size", "10Gi")}}}
    if storage.get("class"):
        pvc_spec["storageClassName"] = storage["class"]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta(broker, names["statefulset"], "broker"),
        "spec": {
            "serviceName": names["headless"],
            "replicas": int(spec.get("replicas", 1)),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": selector(broker, "broker")},
            "template": {
                "metadata": {"labels": {**pod_meta.get("labels", {}), **labels(broker, "broker")},
                             "annotations": {**pod_meta.get("annotations", {}),
                                             "strata.dev/config-hash": config_hash}},
                "spec": {
                    "serviceAccountName": names["serviceaccount"],
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": RESTRICTED_POD,
                    "containers": [container],
                    "volumes": volumes,
                    **({"imagePullSecrets": pod_pull_secrets} if pod_pull_secrets else {}),
                    **pod_spec_extra,
                },
            },
            "volumeClaimTemplates": [{
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "labels": labels(broker, "broker")},
                "spec": pvc_spec,
            }],
        },
    }


def claim_size(statefulset: dict[str, Any] | None) -> str | None:
    """requests.storage of a StatefulSet's `data` volumeClaimTemplate (None without one)."""
    for template in ((statefulset or {}).get("spec") or {}).get("volumeClaimTemplates") or []:
        if (template.get("metadata") or {}).get("name") == "data":
            return ((template.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
    return None


def with_claim_size(statefulset: dict[str, Any], size: str) -> dict[str, Any]:
    """The StatefulSet with its `data` claim template at `size`: a StatefulSet's volumeClaimTemplates
    are immutable, so an existing one keeps the size it was made with (the PVCs are expanded instead)."""
    out = json.loads(json.dumps(statefulset))
    for template in out["spec"]["volumeClaimTemplates"]:
        if template["metadata"]["name"] == "data":
            template["spec"]["resources"]["requests"]["storage"] = size
    return out


def broker_pvc_names(broker: dict[str, Any]) -> list[str]:
    """The brokers' data PersistentVolumeClaims: data-<statefulset>-<ordinal>."""
    sts = broker_names(broker["metadata"]["name"])["statefulset"]
    return [f"data-{sts}-{i}" for i in range(int(broker["spec"].get("replicas", 1)))]


def pvc_resizes(broker: dict[str, Any], pvc_names: list[str], size: str) -> list[dict[str, Any]]:
    """Merge patches that request `size` for these broker PVCs (volume expansion: the StorageClass
    must allow it; the storage driver then grows the volume)."""
    ns = broker["metadata"]["namespace"]
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": ns},
             "spec": {"resources": {"requests": {"storage": size}}}} for name in pvc_names]


def eventbroker_objects(broker: dict[str, Any], operator_user: str = DEFAULT_OPERATOR_USER,
                        users_file: str | None = None, default_pull_secrets: list[str] | tuple[str, ...] = (),
                        made_size: str | None = None) -> list[dict[str, Any]]:
    """Everything an EventBroker owns, in apply order. An external broker owns nothing. With a
    listener that authenticates, also the credentials Secret (`users_file`: scram.credentials_file;
    an empty file when None, e.g. before the operator has a password); with a TLS listener and
    spec.tls.issuerRef, the cert-manager Certificate of the brokers. `made_size`: the claim size an
    existing StatefulSet was made with, which it keeps (with_claim_size)."""
    if broker["spec"].get("external"):
        return []
    from . import registry_objects

    secret = [broker_credentials_secret(broker, users_file or '{"users": {}}\n')] if uses_sasl(broker["spec"]) else []
    if uses_tls(broker["spec"]) and (broker["spec"].get("tls") or {}).get("issuerRef"):
        secret.append(broker_certificate(broker))
    sts = broker_statefulset(broker, operator_user, default_pull_secrets)
    return [broker_serviceaccount(broker), *secret, broker_configmap(broker, operator_user), *broker_services(broker),
            broker_pdb(broker), with_claim_size(sts, made_size) if made_size else sts,
            *registry_objects.registry_objects(broker, default_pull_secrets, operator_user)]


def registry_password_objects(broker: dict[str, Any], password: str) -> list[dict[str, Any]]:
    """The schema registry's password Secret (registry_objects.password_secret), applied by the handler
    when it makes the password (the registry logs in to an authenticating first listener)."""
    from . import registry_objects

    return [registry_objects.password_secret(broker, password)]


# -- Microservice --------------------------------------------------------------------------

def principal_name(ms: dict[str, Any]) -> str:
    """The broker user of a Microservice: `<namespace>.<name>` (unique cluster-wide)."""
    return f"{ms['metadata']['namespace']}.{ms['metadata']['name']}"


def principal(ms: dict[str, Any]) -> str:
    return f"User:{principal_name(ms)}"


def microservice_names(name: str) -> dict[str, str]:
    return {"deployment": name, "serviceaccount": name, "secret": f"{name}-kafka", "tls": f"{name}-kafka-tls"}


def consumer_group(ms: dict[str, Any]) -> str:
    """spec.consumerGroup, else `<namespace>.<name>` (like the principal: unique cluster-wide, so two
    teams' services of one name never share a group)."""
    return ms["spec"].get("consumerGroup") or principal_name(ms)


def microservice_secret(ms: dict[str, Any], bootstrap: str, password: str, sasl: bool,
                        listener: dict[str, Any] | None = None, ca_pem: str | None = None) -> dict[str, Any]:
    """Bootstrap settings and SCRAM credentials, exposed to the app as environment variables
    (librdkafka/Java property names upper-cased with underscores, as most client wrappers read them).

    The security protocol is the `listener`'s (without one: SASL_PLAINTEXT when `sasl`, else PLAINTEXT).
    On a TLS listener the Secret also carries the CA: KAFKA_SSL_CA_PEM (its PEM, librdkafka's ssl.ca.pem)
    and KAFKA_SSL_CA_LOCATION, the file the Deployment mounts it as; on a mutual-TLS listener,
    KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION of the mounted client certificate."""
    spec = ms["spec"]
    protocol = listener_protocol(listener) if listener else ("SASL_PLAINTEXT" if sasl else "PLAINTEXT")
    data = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SECURITY_PROTOCOL": protocol,
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": principal_name(ms),
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_CLIENT_ID": ms["metadata"]["name"],
        "STRATA_TEAM": spec["team"],
        "STRATA_PRODUCES": ",".join(spec.get("produces") or []),
        "STRATA_CONSUMES": ",".join(spec.get("consumes") or []),
    }
    if spec.get("consumes"):
        data["KAFKA_GROUP_ID"] = consumer_group(ms)
    if protocol in ("SSL", "SASL_SSL"):
        data[CA_PEM_KEY] = ca_pem or ""
        data["KAFKA_SSL_CA_LOCATION"] = f"{CLIENT_TLS_DIR}/ca.crt"
    if listener and mutual_tls(listener):
        data["KAFKA_SSL_CERTIFICATE_LOCATION"] = f"{CLIENT_TLS_DIR}/tls.crt"
        data["KAFKA_SSL_KEY_LOCATION"] = f"{CLIENT_TLS_DIR}/tls.key"
    names = microservice_names(ms["metadata"]["name"])
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": meta(ms, names["secret"], "microservice"), "stringData": data}


def microservice_serviceaccount(ms: dict[str, Any]) -> dict[str, Any]:
    names = microservice_names(ms["metadata"]["name"])
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(ms, names["serviceaccount"], "microservice"), "automountServiceAccountToken": False}


def microservice_certificate(ms: dict[str, Any], issuer: dict[str, str]) -> dict[str, Any]:
    """The client certificate of a Microservice on a mutual-TLS listener (cert-manager, the EventBroker's
    issuer): common name = its principal name `<namespace>.<name>`, so the broker's principal is the
    same as with SCRAM. Written to the Secret <name>-kafka-tls, which the Deployment mounts."""
    names = microservice_names(ms["metadata"]["name"])
    return {"apiVersion": CERT_MANAGER_API, "kind": "Certificate",
            "metadata": meta(ms, names["tls"], "microservice"),
            "spec": {"secretName": names["tls"], "commonName": principal_name(ms), "issuerRef": dict(issuer),
                     "usages": ["client auth", "digital signature", "key encipherment"],
                     "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                     "secretTemplate": {"labels": labels(ms, "microservice")}}}


def client_tls_volume(ms: dict[str, Any], mtls: bool) -> dict[str, Any]:
    """The CA from the service's Secret as ca.crt (and, for mutual TLS, tls.crt and tls.key of its
    certificate's Secret), in one directory: CLIENT_TLS_DIR."""
    names = microservice_names(ms["metadata"]["name"])
    sources: list[dict[str, Any]] = [{"secret": {"name": names["secret"],
                                                 "items": [{"key": CA_PEM_KEY, "path": "ca.crt"}]}}]
    if mtls:
        sources.append({"secret": {"name": names["tls"], "items": [{"key": "tls.crt", "path": "tls.crt"},
                                                                    {"key": "tls.key", "path": "tls.key"}]}})
    return {"name": "kafka-tls", "projected": {"sources": sources, "defaultMode": 0o440}}


def microservice_deployment(ms: dict[str, Any], secret_version: str = "",
                            default_pull_secrets: list[str] | tuple[str, ...] = (), tls: bool = False,
                            mtls: bool = False) -> dict[str, Any]:
    """The app's Deployment: its Secret as environment (envFrom); with `tls`, the CA (and with `mtls` the
    client certificate) mounted at CLIENT_TLS_DIR."""
    spec = ms["spec"]
    names = microservice_names(ms["metadata"]["name"])
    container: dict[str, Any] = {
        "name": "app",
        "image": spec["image"],
        "envFrom": [{"secretRef": {"name": names["secret"]}}],
        "env": list(spec.get("env") or []),
        "securityContext": RESTRICTED_CONTAINER,
    }
    for key in ("command", "args", "resources"):
        if spec.get(key):
            container[key] = spec[key]
    volumes = []
    if tls:
        volumes.append(client_tls_volume(ms, mtls))
        container["volumeMounts"] = [{"name": "kafka-tls", "mountPath": CLIENT_TLS_DIR, "readOnly": True}]
    pod_labels = {**labels(ms, "microservice"), "strata.dev/team": spec["team"]}
    pod_pull_secrets = pull_secrets(spec, default_pull_secrets)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(ms, names["deployment"], "microservice"),
        "spec": {
            # absent replicas: not ours to set (not in the applied object, so an HPA's or KEDA's value stays)
            **({"replicas": int(spec["replicas"])} if "replicas" in spec else {}),
            "selector": {"matchLabels": selector(ms, "microservice")},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {"strata.dev/credentials-version": secret_version or "0"}},
                "spec": {"serviceAccountName": names["serviceaccount"], "automountServiceAccountToken": False,
                         "securityContext": RESTRICTED_POD, "containers": [container],
                         **({"volumes": volumes} if volumes else {}),
                         **({"imagePullSecrets": pod_pull_secrets} if pod_pull_secrets else {})},
            },
        },
    }


def credentials_only(ms: dict[str, Any]) -> bool:
    """A Microservice without an image: its Secret and ACLs only; the app is deployed by other tools."""
    return not ms["spec"].get("image")


def microservice_objects(ms: dict[str, Any], bootstrap: str, password: str, sasl: bool,
                         default_pull_secrets: list[str] | tuple[str, ...] = (), listener: dict[str, Any] | None = None,
                         ca_pem: str | None = None, issuer: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Its ServiceAccount, Secret and Deployment; only the Secret for a credentials-only service. On a
    mutual-TLS `listener`, also its client Certificate (from `issuer`, the EventBroker's issuerRef)."""
    secret = microservice_secret(ms, bootstrap, password, sasl, listener, ca_pem)
    tls = listener is not None and listener_protocol(listener) in ("SSL", "SASL_SSL")
    mtls = listener is not None and mutual_tls(listener)
    certificate = [microservice_certificate(ms, issuer)] if mtls and issuer else []
    if credentials_only(ms):
        return [secret, *certificate]
    version = hashlib.sha256(json.dumps(secret["stringData"], sort_keys=True).encode()).hexdigest()[:16]
    return [microservice_serviceaccount(ms), secret, *certificate,
            microservice_deployment(ms, version, default_pull_secrets, tls, mtls)]
