"""Issue 27: a Topic or Microservice change is acted on within 2 s of the update event.

`strata operator` as a process against the emulated API (kmock) and a real broker with SCRAM and the
authorizer on. The resync interval and retry delay are 600 s, so the broker's resync never runs
during the test (its first pass comes after half an interval): only the update event can explain a
change seen at the broker. Each round patches a spec and polls the broker (every 20 ms, through an
admin client of the test's own) until the change is there; the delay is measured from just before
the PATCH is sent, so it includes the API request, the watch event, kopf's batching window (0.1 s),
the handler and the broker's own requests.

Asserted: the median of three rounds per kind is under the issue's 2 s, and no round takes more than
5 s. The median is the figure the issue names, measured robustly (a single stall of a loaded 2-core
machine moves one round, not the median); the 5 s ceiling lets such a stall pass while staying two
orders of magnitude below the resync interval, so a change carried by the resync would still fail.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import secutil
from brokerproc import BrokerProcess
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)
from kmockserver import KubeEmulatorProcess
from test_operator_reconcile import API, cond, eventually

OPERATOR_USER = "strata-operator"
OPERATOR_PASSWORD = "operator-" + uuid.uuid4().hex
RESYNC = 600.0  # no resync pass during the test: only the update event acts
REQUIRED = 2.0  # the issue: a change is acted on within 2 s of the update event
CEILING = 5.0  # one round on a stalled machine (see the module docstring)
ROUNDS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeEmulatorProcess, AdminClient]]:
    workdir = tmp_path_factory.mktemp("op-latency")
    creds = workdir / "users.json"
    secutil.write_credentials(creds, {OPERATOR_USER: OPERATOR_PASSWORD})
    broker = BrokerProcess(workdir / "broker", listeners={"SASL_PLAINTEXT": None}, settings={
        "sasl.credentials.file": str(creds), "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
        "authorizer.enable": "true", "super.users": f"User:{OPERATOR_USER}",
        "auto.create.topics.enable": "false"}).start()
    kube = KubeEmulatorProcess(workdir).start()
    log = workdir / "operator.log"
    kube.operator_log = log  # type: ignore[attr-defined]
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig()),
           "STRATA_OPERATOR_RECONCILE_INTERVAL": str(RESYNC), "STRATA_OPERATOR_RETRY_DELAY": str(RESYNC),
           "STRATA_OPERATOR_BROKER_TIMEOUT": "10",
           "STRATA_OPERATOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "STRATA_OPERATOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "STRATA_OPERATOR_KAFKA_SASL_USERNAME": OPERATOR_USER,
           "STRATA_OPERATOR_KAFKA_SASL_PASSWORD": OPERATOR_PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness", ""],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        kube.create({"apiVersion": API, "kind": "EventBroker", "metadata": {"name": "events"}, "spec": {
            "external": {"bootstrapServers": broker.address("SASL_PLAINTEXT")},
            "listeners": [{"name": "sasl", "port": broker.listeners["SASL_PLAINTEXT"],
                           "authentication": "scram-sha-512"}]}})
        admin = AdminClient(secutil.confluent(broker.address("SASL_PLAINTEXT"), secutil.Auth(
            "SASL_PLAINTEXT", "SCRAM-SHA-512", OPERATOR_USER, OPERATOR_PASSWORD)))
        yield kube, admin
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        kube.stop()
        broker.stop()


def delay_until(change: Callable[[], Any], seen: Callable[[], bool], what: str, kube: KubeEmulatorProcess) -> float:
    """Seconds from just before `change()` (a PATCH) until `seen()` holds at the broker."""
    started = time.monotonic()
    change()
    deadline = started + 60
    while time.monotonic() < deadline:
        if seen():
            return time.monotonic() - started
        time.sleep(0.02)
    tail = "\n".join(Path(kube.operator_log).read_text(errors="replace").splitlines()[-30:])  # type: ignore[attr-defined]
    raise AssertionError(f"{what}: not at the broker after 60 s\n{tail}")


def retention_ms(admin: AdminClient, topic: str) -> str:
    (configs,) = [f.result(10) for f in admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()]
    return configs["retention.ms"].value


def reads(admin: AdminClient, principal: str, topic: str) -> bool:
    flt = AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal, None,
                           AclOperation.READ, AclPermissionType.ALLOW)
    return bool(admin.describe_acls(flt).result(10))


def check(delays: list[float], what: str) -> None:
    assert max(delays) < CEILING, f"{what}: a change took {max(delays):.2f} s (rounds: {delays})"
    assert statistics.median(delays) < REQUIRED, f"{what}: median {statistics.median(delays):.2f} s (rounds: {delays})"


def test_a_topic_change_reaches_the_broker_within_2_s(setup):
    kube, admin = setup
    kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": "lat-topic"},
                 "spec": {"brokerRef": {"name": "events"}, "team": "t", "retention": "1d"}})
    eventually(lambda: cond(kube.get("Topic", "lat-topic"), "Ready").get("status") == "True", "Topic Ready",
               timeout=60, kube=kube)
    delays = []
    for days in range(2, 2 + ROUNDS):
        want = str(days * 24 * 3600 * 1000)
        delays.append(delay_until(
            lambda days=days: kube.patch_spec("Topic", "lat-topic", {"retention": f"{days}d"}),
            lambda want=want: retention_ms(admin, "lat-topic") == want, f"retention {days}d", kube))
    print(f"Topic change to broker: {[f'{d:.2f}' for d in delays]} s")
    check(delays, "Topic retention")


def test_a_microservice_change_reaches_the_broker_within_2_s(setup):
    kube, admin = setup
    for name in ("lat-in", "lat-out"):
        kube.create({"apiVersion": API, "kind": "Topic", "metadata": {"name": name},
                     "spec": {"brokerRef": {"name": "events"}, "team": "t"}})
    kube.create({"apiVersion": API, "kind": "Microservice", "metadata": {"name": "lat-svc"},
                 "spec": {"brokerRef": {"name": "events"}, "team": "t", "produces": ["lat-out"]}})
    eventually(lambda: all(cond(kube.get(kind, name), "Ready").get("status") == "True"
                           for kind, name in (("Topic", "lat-in"), ("Topic", "lat-out"), ("Microservice", "lat-svc"))),
               "Topics and Microservice Ready", timeout=60, kube=kube)
    principal = "User:default.lat-svc"
    assert not reads(admin, principal, "lat-in")
    delays = []
    for i in range(ROUNDS):  # consumes lat-in, then not, then again: its Read ACL appears, goes, appears
        consume = i % 2 == 0
        delays.append(delay_until(
            lambda consume=consume: kube.patch_spec("Microservice", "lat-svc", {
                "produces": ["lat-out"], "consumes": ["lat-in"] if consume else []}),
            lambda consume=consume: reads(admin, principal, "lat-in") == consume,
            f"Read on lat-in {'granted' if consume else 'revoked'}", kube))
    print(f"Microservice change to broker: {[f'{d:.2f}' for d in delays]} s")
    check(delays, "Microservice ACLs")
