"""The cluster controller (strata_operator.cluster): builders against the Kubernetes schemas, the
controller against a real S3 endpoint (moto) with hand-written leases, its command line, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
from click.testing import CliRunner
from s3server import CREDENTIALS
from strata_cli.main import main as strata
from strata_contract.layout import member_key, topic_meta_key
from strata_contract.lease import MemberLease
from strata_contract.placement import read_placement
from strata_operator import resources
from strata_operator.cluster import kube_objects
from strata_operator.cluster.controller import BucketReader, Controller, FileSink, Liveness

K8S_VERSION = "1.35"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)


def broker_cr(replicas: int = 3, **spec):
    return {"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker",
            "metadata": {"name": "events", "namespace": "strata", "uid": "u-1"},
            "spec": {"replicas": replicas, "image": "strata-broker:0.1",
                     "tieredStorage": {"bucket": "b", "endpoint": "http://minio:9000"}, **spec}}


# ---- builders ---------------------------------------------------------------------------


def test_clustered_statefulset_mounts_the_placement_and_validates():
    from strata_contract.placement import Assignment, BrokerAddress, Placement, TopicPlacement

    cr = broker_cr(3)
    sts = resources.broker_statefulset(cr)
    kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    pod = sts["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "placement"]
    assert volume["configMap"] == {"name": "events-placement", "optional": True}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert kube_objects.PLACEMENT_DIR in mounts
    props = resources.broker_properties(cr)
    assert props["cluster.placement.file"] == "/etc/strata/placement/placement.json"
    text = resources.broker_configmap(cr)["data"]["broker.properties"]
    assert "cluster.placement.file=/etc/strata/placement/placement.json\n" in text

    placement = Placement(4, (BrokerAddress(0, "events-broker-0.events-brokers.strata.svc", 9092),),
                          {"orders": TopicPlacement(str(uuid.uuid4()), (Assignment(0, 2),), {"retention.ms": "5"})})
    cm = kube_objects.placement_configmap(cr, placement)
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    assert cm["metadata"]["name"] == "events-placement" and cm["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert kube_objects.placement_from_configmap(cm) == placement
    assert kube_objects.placement_from_configmap({"data": {"placement.json": "{"}}) is None
    assert kube_objects.members(cr) == {0, 1, 2}


def test_single_broker_is_not_clustered():
    for cr in (broker_cr(1), broker_cr(3, external={"bootstrapServers": "h:9092"})):
        assert not kube_objects.clustered(cr)
        assert "cluster.placement.file" not in resources.broker_properties(cr)
    sts = resources.broker_statefulset(broker_cr(1))
    assert all(v["name"] != "placement" for v in sts["spec"]["template"]["spec"]["volumes"])


# ---- liveness ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease(i: int, renewals: int, lease_ms: int = 1000) -> MemberLease:
    return MemberLease(i, "127.0.0.1", 9092 + i, renewals, lease_ms)


def test_liveness_by_the_controllers_own_clock():
    clock = Clock()
    live = Liveness(grace_ms=1000, clock=clock)
    assert [b.id for b in live.observe({0: lease(0, 5), 1: lease(1, 9)})] == [0, 1]  # first seen: just renewed
    for _ in range(4):
        clock.now += 0.4
        ids = [b.id for b in live.observe({0: lease(0, 5), 1: lease(1, int(clock.now * 10))})]
    assert ids == [0, 1]  # 0 has been silent 1.6 s: within lease 1 s + grace 1 s
    clock.now += 0.5
    assert [b.id for b in live.observe({0: lease(0, 5), 1: lease(1, 99)})] == [1]  # 2.1 s: not live
    assert [b.id for b in live.observe({1: lease(1, 99)})] == [1]  # a missing lease: not live at once
    # the controller was blind for a long time: nobody is blamed for it
    clock.now += 60
    assert [b.id for b in live.observe({0: lease(0, 5), 1: lease(1, 99)})] == [0, 1]


# ---- the controller against S3 ------------------------------------------------------------


def put_lease(s3, lease_: MemberLease, cluster: str = "c1") -> None:
    s3.server.client().put_object(Bucket=s3.name, Key=member_key("", cluster, lease_.id), Body=lease_.to_json())


def put_topic(s3, name: str, partitions: int, topic_id: uuid.UUID | None = None, cluster: str = "c1",
              **configs: str) -> uuid.UUID:
    tid = topic_id or uuid.uuid4()
    body = json.dumps({"name": name, "id": str(tid), "partitions": partitions, "configs": configs,
                       "internal": False})
    s3.server.client().put_object(Bucket=s3.name, Key=topic_meta_key("", cluster, name, tid), Body=body.encode())
    s3.server.client().put_object(Bucket=s3.name, Key=topic_meta_key("", cluster, name, tid).replace(
        "topic.json", "0/manifest.json"), Body=b"{}")
    return tid


def delete_topic(s3, name: str, tid: uuid.UUID, cluster: str = "c1") -> None:
    s3.server.client().delete_object(Bucket=s3.name, Key=topic_meta_key("", cluster, name, tid))


def test_controller_places_fails_over_rebalances_and_keeps_epochs(s3, tmp_path: Path):
    clock = Clock()
    path = tmp_path / "placement.json"
    members = tmp_path / "members"
    members.write_text("0,1,2")

    def make() -> Controller:
        reader = BucketReader(s3.name, s3.server.endpoint, topic_refresh=0, clock=clock)
        return Controller(reader, FileSink(str(path)), cluster="c1", members_file=str(members), grace_ms=1000,
                          rebalance_file=f"{path}.rebalance", clock=clock)

    controller = make()
    loop = asyncio.new_event_loop()

    def tick(c: Controller = controller, **kw):
        return loop.run_until_complete(c.tick(**kw))

    try:
        scenario(s3, path, members, clock, controller, make, tick)
    finally:
        loop.run_until_complete(controller.reader.close())
        loop.close()


def scenario(s3, path, members, clock, controller, make, tick) -> None:
    r = tick()
    assert r.published and read_placement(str(path)).version == 0  # written once at start, empty
    for i in range(3):
        put_lease(s3, lease(i, 1))
    orders = put_topic(s3, "orders", 12, retention="5")
    put_topic(s3, "other-team.events", 3)
    r = tick()
    p = read_placement(str(path))
    assert p == r.decision.placement and p.version == 1
    assert [b.id for b in p.brokers] == [0, 1, 2]
    assert sorted(n for n in p.led_by(0).values()) == [1] * 5 and len(p.led_by(1)) == 5 and len(p.led_by(2)) == 5
    assert {len([a for a in p.topics["orders"].partitions if a.leader == b]) for b in range(3)} == {4}
    assert p.topics["orders"].configs == {"retention": "5"}
    mtime = path.stat().st_mtime_ns
    r = tick()
    assert not r.published and path.stat().st_mtime_ns == mtime  # nothing changed: not rewritten

    # broker 2 stops renewing (SIGKILL): after lease + grace its partitions move, epochs + 1
    for step in range(5):
        clock.now += 0.5
        for i in (0, 1):
            put_lease(s3, lease(i, 2 + step))
        tick()
    p2 = read_placement(str(path))
    assert [b.id for b in p2.brokers] == [0, 1] and p2.version == 2
    for (topic, part), epoch in p.led_by(2).items():
        a = p2.assignment(topic, part)
        assert a.leader in (0, 1) and a.epoch == epoch + 1

    # broker 2 comes back: scale out brings it partitions again (fewest moves), epochs rise again
    put_lease(s3, lease(2, 100))
    r = tick()
    p3 = read_placement(str(path))
    assert [b.id for b in p3.brokers] == [0, 1, 2] and len(r.decision.moves) == 5
    assert all(m.reason == "scale-out" and m.target == 2 for m in r.decision.moves)
    for m in r.decision.moves:
        assert m.epoch == p2.assignment(m.topic, m.partition).epoch + 1

    # scale out to 4 through the members file; a clean stop (deleted lease) moves partitions at once
    members.write_text("0 1 2 3")
    put_lease(s3, lease(3, 1))
    r = tick()
    assert sorted(len(read_placement(str(path)).led_by(b)) for b in range(4)) == [3, 4, 4, 4]
    s3.server.client().delete_object(Bucket=s3.name, Key=member_key("", "c1", 3))
    r = tick()
    assert {m.reason for m in r.decision.moves} == {"broker-lost"} and len(r.decision.moves) in (3, 4)
    assert 3 not in {b.id for b in read_placement(str(path)).brokers}

    # topic deleted (topic.json gone first), then re-created with a new id: epochs start at 1
    delete_topic(s3, "orders", orders)
    tick()
    assert "orders" not in read_placement(str(path)).topics
    put_topic(s3, "orders", 2)
    tick()
    assert {a.epoch for a in read_placement(str(path)).topics["orders"].partitions} == {1}

    # a restarted controller continues from the file: versions and epochs keep rising
    before = read_placement(str(path))
    restarted = make()
    r = tick(restarted)
    assert not r.decision.changed and r.decision.placement == before
    # rebalance request file: consumed after the tick
    Path(f"{path}.rebalance").write_text("now")
    tick(restarted)
    assert not Path(f"{path}.rebalance").exists()


def wait_for(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def test_controller_process_and_cli(s3, tmp_path: Path):
    path = tmp_path / "placement.json"
    env = {**os.environ, **CREDENTIALS}
    log = open(tmp_path / "controller.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "strata_operator.cluster.controller", "--endpoint",
                             s3.server.endpoint, "--bucket", s3.name, "--cluster", "c1", "--placement", str(path),
                             "--members", "0,1", "--grace-ms", "500", "--interval", "0.2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    # Brokers renew their leases as real ones do, so a slow machine never reads as a failure; the
    # failover at the end is broker 0 no longer renewing.
    renewing: dict[int, MemberLease] = {}
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.2):
            for lease_ in list(renewing.values()):
                lease_.renewals += 1
                put_lease(s3, lease_)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        put_topic(s3, "orders", 4)
        renewing[0] = MemberLease(0, "127.0.0.1", 9092, 1, 1000, {"orders/0": 2048.0})
        put_lease(s3, renewing[0])
        p = wait_for(lambda: (p := read_placement(str(path))) and len(p.brokers) == 1 and p, "broker 0 placed")
        assert len(p.led_by(0)) == 4
        renewing[1] = MemberLease(1, "127.0.0.1", 9093, 1, 1000)
        put_lease(s3, renewing[1])
        p = wait_for(lambda: (p := read_placement(str(path))) and len(p.led_by(1)) == 2 and p, "scale out")
        # a non-member is never placed
        put_lease(s3, MemberLease(7, "127.0.0.1", 9099, 1, 1000))
        result = CliRunner().invoke(strata, ["cluster", "rebalance", "--placement", str(path), "--wait", "10"])
        assert result.exit_code == 0, result.output
        assert "already balanced" in result.output
        assert 7 not in {b.id for b in read_placement(str(path)).brokers}
        result = CliRunner().invoke(strata, ["cluster", "show", "--placement", str(path), "--bucket", s3.name,
                                             "--endpoint", s3.server.endpoint, "--cluster-id", "c1"])
        assert result.exit_code == 0, result.output
        assert "127.0.0.1:9093" in result.output and "orders/" in result.output
        result = CliRunner().invoke(strata, ["cluster", "show", "--placement", str(path), "--json"])
        doc = json.loads(result.output)
        assert doc["placement"]["version"] == read_placement(str(path)).version
        assert {b: v["partitions"] for b, v in doc["brokers"].items()} == {"0": 2, "1": 2}
        # broker 0 stops renewing: gone after lease + grace, everything on broker 1
        del renewing[0]
        wait_for(lambda: (p := read_placement(str(path))) and len(p.led_by(1)) == 4, "failover", timeout=30)
    finally:
        stop.set()
        renewer.join(5)
        proc.terminate()
        proc.wait(10)
        log.close()
    text = (tmp_path / "controller.log").read_text()
    assert "move orders/" in text and "broker-lost" in text, text


# ---- the kopf timer against an emulated Kubernetes API ---------------------------------------


def test_operator_publishes_the_placement_configmap_and_rebalances(s3, tmp_path: Path):
    from brokerproc import free_port
    from kmockserver import KubeEmulatorProcess

    emulator = KubeEmulatorProcess(tmp_path).start()
    log_path = tmp_path / "operator.log"
    proc = None
    try:
        emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        env = {**os.environ, **CREDENTIALS, "KUBECONFIG": str(emulator.kubeconfig()),
               "STRATA_OPERATOR_RECONCILE_INTERVAL": "30", "STRATA_OPERATOR_RETRY_DELAY": "1",
               "STRATA_OPERATOR_PLACEMENT_INTERVAL": "0.5", "STRATA_OPERATOR_PLACEMENT_GRACE_MS": "60000"}
        log = open(log_path, "w")
        proc = subprocess.Popen([sys.executable, "-m", "strata_cli", "operator", "--liveness",
                                 f"http://127.0.0.1:{free_port()}/healthz"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        cluster = "default.events"  # the brokers' cluster.id: <namespace>.<name>
        for i in range(2):
            put_lease(s3, MemberLease(i, f"events-broker-{i}.events-brokers.default.svc", 9092, 1), cluster)
        put_lease(s3, MemberLease(5, "stray", 9092, 1), cluster)  # not a member (replicas 2): never placed
        put_topic(s3, "orders", 6, cluster=cluster)
        emulator.create({"apiVersion": "strata.dev/v1alpha1", "kind": "EventBroker", "metadata": {"name": "events"},
                         "spec": {"replicas": 2, "image": "strata-broker:0.1",
                                  "tieredStorage": {"bucket": s3.name, "endpoint": s3.server.endpoint}}})

        def placement():
            cm = emulator.get("ConfigMap", "events-placement")
            return kube_objects.placement_from_configmap(cm)

        try:
            p = wait_for(lambda: (p := placement()) and p.topics and p, "placement ConfigMap", timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()[-3000:]}") from None
        assert [b.id for b in p.brokers] == [0, 1] and len(p.led_by(0)) == 3 and len(p.led_by(1)) == 3
        sts = emulator.get("StatefulSet", "events-broker")
        assert any(v["name"] == "placement" for v in sts["spec"]["template"]["spec"]["volumes"])
        # the rebalance annotation is taken and removed (already balanced: nothing moves)
        emulator.patch("EventBroker", "events", {"metadata": {"annotations": {"strata.dev/rebalance": "now"}}})
        wait_for(lambda: "strata.dev/rebalance" not in (emulator.get("EventBroker", "events")["metadata"].get(
            "annotations") or {}), "annotation removed", timeout=20)
        assert placement().version == p.version
        # scale out to 3: broker 2 joins once its lease shows up; the fewest partitions move to it
        emulator.patch_spec("EventBroker", "events", {"replicas": 3})
        put_lease(s3, MemberLease(2, "events-broker-2.events-brokers.default.svc", 9092, 1), cluster)
        p2 = wait_for(lambda: (q := placement()) and len(q.brokers) == 3 and q, "scale out", timeout=30)
        assert sorted(len(p2.led_by(b)) for b in range(3)) == [2, 2, 2]
        assert sum(1 for k, e in p.led_by(0).items() if k in p2.led_by(0)) == 2
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        emulator.stop()
