"""The schema registry of an EventBroker (`spec.schemaRegistry`): pure functions, as resources.py.

A Deployment of `strata-registry` (the broker image carries it) with `spec.schemaRegistry.replicas` pods,
each advertising its pod IP to the others (followers forward writes to the leader), and a ClusterIP
Service `<name>-schema-registry` on the REST port. The brokers get `schema.registry.principal`, the
principal the registry connects as, so it may write the internal `_schemas` topic
(docs/schema-registry.md).

- Connection to the brokers: their first listener. Without authentication the registry is User:ANONYMOUS;
  with scram-sha-512 it logs in as its own user `strata-schema-registry` (its password in the Secret
  `<name>-schema-registry`, key `password`, made by the operator, and in the brokers' credentials file
  beside the operator's), a super user when the authorizer is on; over TLS it trusts the brokers' CA.
- REST TLS (`spec.schemaRegistry.tls`, as `spec.tls`: a cert-manager issuer, for which the operator asks a
  Certificate `<name>-schema-registry-tls` naming the Service, or an existing Secret with tls.crt, tls.key
  and ca.crt): HTTPS, instances verify each other against ca.crt when they forward writes.
- REST authentication when the brokers' authorizer is on: HTTP basic auth checked against the first
  listener's SCRAM users (the principals are the brokers'), and subject authorization from the brokers'
  topic ACLs, the brokers' super users allowed everything.
"""

from __future__ import annotations

from typing import Any

from . import resources

REGISTRY_USER = "strata-schema-registry"  # its SCRAM user on a first listener that authenticates
ANONYMOUS = "User:ANONYMOUS"
PASSWORD_KEY = "password"
PASSWORD_ENV = "STRATA_REGISTRY_KAFKA_PASSWORD"
TLS_DIR = "/etc/strata/registry-tls"  # the REST certificate: tls.crt, tls.key, ca.crt
KAFKA_CA_DIR = "/etc/strata/kafka-ca"  # the brokers' CA, for a TLS first listener


def enabled(broker: dict[str, Any]) -> bool:
    spec = broker.get("spec", {})
    return bool((spec.get("schemaRegistry") or {}).get("enabled")) and not spec.get("external")


def registry_name(broker: dict[str, Any]) -> str:
    return f"{broker['metadata']['name']}-schema-registry"


def registry_port(broker: dict[str, Any]) -> int:
    return int((broker["spec"].get("schemaRegistry") or {}).get("port", 8081))


def _registry_spec(broker: dict[str, Any]) -> dict[str, Any]:
    return broker.get("spec", {}).get("schemaRegistry") or {}


def uses_tls(broker: dict[str, Any]) -> bool:
    """The REST API is served over HTTPS (spec.schemaRegistry.tls)."""
    return bool(_registry_spec(broker).get("tls"))


def authenticates(broker: dict[str, Any]) -> bool:
    """REST authentication and subject authorization: on when the brokers' authorizer is."""
    return resources.authorizer(broker.get("spec", {}))


def logs_in(broker: dict[str, Any]) -> bool:
    """The brokers' first listener authenticates: the registry logs in as REGISTRY_USER."""
    first = resources.listeners(broker.get("spec", {}))[0]
    return resources.listener_protocol(first).startswith("SASL_")


def registry_principal(broker: dict[str, Any]) -> str:
    return f"User:{REGISTRY_USER}" if logs_in(broker) else ANONYMOUS


def tls_secret_name(broker: dict[str, Any]) -> str:
    """The Secret with the REST certificate: spec.schemaRegistry.tls.secretName, else cert-manager's."""
    return (_registry_spec(broker).get("tls") or {}).get("secretName") or f"{registry_name(broker)}-tls"


def password_secret_name(broker: dict[str, Any]) -> str:
    return registry_name(broker)


def registry_url(broker: dict[str, Any]) -> str:
    """Where clients (and the operator) reach the registry, inside the cluster."""
    scheme = "https" if uses_tls(broker) else "http"
    return f"{scheme}://{registry_name(broker)}.{broker['metadata']['namespace']}.svc:{registry_port(broker)}"


def broker_properties(broker: dict[str, Any], props: dict[str, str]) -> dict[str, str]:
    """The brokers' settings the registry needs, given the ones made so far (none when it is off): the
    principal that may write `_schemas`, and, with the authorizer on, that principal among the super users
    (it reads and writes `_schemas`, joins its election group and reads the ACLs)."""
    if not enabled(broker):
        return {}
    out = {"schema.registry.principal": registry_principal(broker)}
    if props.get("authorizer.enable") == "true":
        users = [u for u in props.get("super.users", "").split(";") if u]
        out["super.users"] = ";".join(dict.fromkeys([*users, registry_principal(broker)]))
    return out


def credentials(broker: dict[str, Any], password: str | None) -> dict[str, str]:
    """The registry's entry for the brokers' credentials file (scram.credentials_file): none when it is
    off, does not log in, or has no password yet."""
    return {REGISTRY_USER: password} if enabled(broker) and logs_in(broker) and password else {}


def password_secret(broker: dict[str, Any], password: str) -> dict[str, Any]:
    """The Secret with the registry's broker password (the operator makes it once and keeps it)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": resources.meta(broker, password_secret_name(broker), "schema-registry"),
            "stringData": {PASSWORD_KEY: password, "username": REGISTRY_USER}}


def certificate(broker: dict[str, Any]) -> dict[str, Any]:
    """The cert-manager Certificate of the REST API (spec.schemaRegistry.tls.issuerRef) for the Service's
    DNS names, written to the Secret `<name>-schema-registry-tls`."""
    tls = _registry_spec(broker)["tls"]
    ref = tls["issuerRef"]
    name, ns = registry_name(broker), broker["metadata"]["namespace"]
    return {"apiVersion": resources.CERT_MANAGER_API, "kind": "Certificate",
            "metadata": resources.meta(broker, tls_secret_name(broker), "schema-registry"),
            "spec": {"secretName": tls_secret_name(broker),
                     "issuerRef": {"name": ref["name"], "kind": ref.get("kind", "Issuer"),
                                   "group": ref.get("group", "cert-manager.io")},
                     "dnsNames": [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"],
                     "usages": ["server auth", "digital signature", "key encipherment"],
                     "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                     "secretTemplate": {"labels": resources.labels(broker, "schema-registry")}}}


def _command(broker: dict[str, Any], port: int, operator_user: str) -> list[str]:
    spec = broker["spec"]
    first = resources.listeners(spec)[0]
    protocol = resources.listener_protocol(first)
    scheme = "https" if uses_tls(broker) else "http"
    kafka: dict[str, str] = {}
    if protocol != "PLAINTEXT":
        kafka["security.protocol"] = protocol
    if protocol.startswith("SASL_"):
        kafka.update({"sasl.mechanism": "SCRAM-SHA-512", "sasl.username": REGISTRY_USER})
    if protocol.endswith("SSL"):
        kafka["ssl.ca.location"] = f"{KAFKA_CA_DIR}/ca.crt"
    command = ["strata-registry", "--bootstrap", resources.bootstrap_servers(broker),
               "--listen", f"0.0.0.0:{port}", "--advertised-url", f"{scheme}://$(POD_IP):{port}"]
    for key, value in kafka.items():
        command += ["--kafka", f"{key}={value}"]
    if uses_tls(broker):
        command += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key",
                    "--tls-ca", f"{TLS_DIR}/ca.crt"]
    if authenticates(broker):
        command += ["--auth-bootstrap", resources.bootstrap_servers(broker), "--auth-mechanism", "SCRAM-SHA-512"]
        if protocol.endswith("SSL"):
            command += ["--auth-kafka", "security.protocol=SASL_SSL", "--auth-kafka",
                        f"ssl.ca.location={KAFKA_CA_DIR}/ca.crt"]
        props = resources.broker_properties(broker, operator_user)
        command += ["--authorize", "--super-users", props.get("super.users", "")]
    return command


def registry_objects(broker: dict[str, Any], default_pull_secrets: list[str] | tuple[str, ...] = (),
                     operator_user: str = resources.DEFAULT_OPERATOR_USER) -> list[dict[str, Any]]:
    """The REST Certificate (with spec.schemaRegistry.tls.issuerRef), the Service and the Deployment, in
    apply order (none when the registry is off). The password Secret is the handler's (it keeps the
    password it made: password_secret)."""
    if not enabled(broker):
        return []
    spec = broker["spec"]
    name, port = registry_name(broker), registry_port(broker)
    component = "schema-registry"
    scheme = "HTTPS" if uses_tls(broker) else "HTTP"
    env: list[dict[str, Any]] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # protoc compiles .proto schemas there
    if logs_in(broker):
        env.append({"name": PASSWORD_ENV, "valueFrom": {"secretKeyRef": {"name": password_secret_name(broker),
                                                                         "key": PASSWORD_KEY}}})
    if resources.listener_protocol(resources.listeners(spec)[0]).endswith("SSL"):
        mounts.append({"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True})
        volumes.append({"name": "kafka-ca", "secret": {"secretName": resources.tls_secret_name(broker),
                                                       "defaultMode": 0o440,
                                                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
    if uses_tls(broker):
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret_name(broker), "defaultMode": 0o440,
                                                  "items": [{"key": k, "path": k}
                                                            for k in ("tls.crt", "tls.key", "ca.crt")]}})
    probe = {"path": "/", "port": "http", "scheme": scheme}  # GET / stays open with authentication
    container: dict[str, Any] = {
        "name": "registry",
        "image": spec["image"],
        "command": _command(broker, port, operator_user),
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": dict(probe), "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": dict(probe), "initialDelaySeconds": 60, "periodSeconds": 10,
                          "failureThreshold": 6},
        "volumeMounts": mounts,
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
                    "volumes": volumes,
                    **({"imagePullSecrets": pull} if pull else {}),
                },
            },
        },
    }
    certificates = [certificate(broker)] if (_registry_spec(broker).get("tls") or {}).get("issuerRef") else []
    return [*certificates, service, deployment]
