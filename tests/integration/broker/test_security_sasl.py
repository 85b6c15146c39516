"""Authentication with real clients: SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 over plaintext and TLS,
TLS alone, what an unauthenticated connection may do, credential reload and the SCRAM admin APIs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import rawclient as rc
import secutil
from brokerproc import BrokerProcess
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest, SaslHandshakeResponse

USERS = {"alice": "alice-secret", "bob": "bob-secret", "admin": "admin-secret"}
SASL_LISTENERS = {"SASL_PLAINTEXT": None, "SASL_SSL": None, "SSL": None}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> secutil.Pki:
    return secutil.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def creds_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("creds") / "users.json"
    secutil.write_credentials(path, USERS)
    return path


@pytest.fixture(scope="module")
def sbroker(tmp_path_factory: pytest.TempPathFactory, pki: secutil.Pki, creds_file: Path) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("sasl") / "broker", listeners=SASL_LISTENERS, settings={
        "sasl.credentials.file": str(creds_file), "sasl.credentials.reload.ms": "100", "num.partitions": "1",
        **secutil.ssl_settings(pki)}).start()
    yield proc
    proc.stop()


def _auth(protocol: str, mechanism: str | None, pki: secutil.Pki, user: str = "alice",
          password: str | None = None) -> secutil.Auth:
    return secutil.Auth(protocol, mechanism, user if mechanism else None,
                        (password or USERS.get(user)) if mechanism else None, pki if "SSL" in protocol else None)


def roundtrip(lib: str, bootstrap: str, auth: secutil.Auth, topic: str, timeout_ms: int = 15000) -> None:
    """Produce one record and read it back with `lib`; raises if authentication fails."""
    value = uuid.uuid4().bytes
    if lib == "kafka-python":
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        # kafka-python 3 bootstraps in the constructor and keeps retrying a failed login for
        # bootstrap_timeout_ms (30 s by default): bound it like the other libraries' timeouts.
        cfg = {**secutil.kafka_python(bootstrap, auth), "bootstrap_timeout_ms": timeout_ms}
        producer = KafkaProducer(**cfg, max_block_ms=timeout_ms, request_timeout_ms=10000)
        try:
            producer.send(topic, value).get(timeout=15)
        finally:
            producer.close(5)
        consumer = KafkaConsumer(**cfg, enable_auto_commit=False, auto_offset_reset="earliest",
                                 request_timeout_ms=15000)
        try:
            consumer.assign([TopicPartition(topic, 0)])
            got: list[bytes] = []
            deadline = time.monotonic() + 15
            while value not in got and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    got += [r.value for r in records]
            assert value in got
        finally:
            consumer.close()
    elif lib == "confluent-kafka":
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

        cfg = secutil.confluent(bootstrap, auth)
        errors: list[object] = []
        producer = Producer({**cfg, "message.timeout.ms": timeout_ms, "error_cb": errors.append})
        delivered: list[object] = []
        producer.produce(topic, value, on_delivery=lambda err, msg: delivered.append(err or msg.offset()))
        producer.flush(timeout_ms / 1000 + 5)
        if not delivered or not isinstance(delivered[0], int):
            raise KafkaException(f"delivery failed: {delivered} {errors}")
        consumer = Consumer({**cfg, "group.id": f"g-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None and msg.value() == value:
                    break
            else:
                raise AssertionError("confluent consumer did not read the record back")
        finally:
            consumer.close()
    else:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        async def run() -> None:
            cfg = secutil.aiokafka(bootstrap, auth)
            producer = AIOKafkaProducer(**cfg, request_timeout_ms=10000)
            await producer.start()
            try:
                await producer.send_and_wait(topic, value)
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer(**cfg, enable_auto_commit=False, auto_offset_reset="earliest")
            await consumer.start()
            try:
                consumer.assign([TopicPartition(topic, 0)])
                async with asyncio.timeout(15):
                    while True:
                        msg = await consumer.getone()
                        if msg.value == value:
                            return
            finally:
                await consumer.stop()

        asyncio.run(run())


LIBS = ["kafka-python", "confluent-kafka", "aiokafka"]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_clients_authenticate_over_sasl_plaintext(sbroker: BrokerProcess, pki: secutil.Pki, topic_name: str,
                                                  lib: str, mechanism: str) -> None:
    roundtrip(lib, sbroker.address("SASL_PLAINTEXT"), _auth("SASL_PLAINTEXT", mechanism, pki), topic_name)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_clients_authenticate_over_sasl_ssl(sbroker: BrokerProcess, pki: secutil.Pki, topic_name: str, lib: str,
                                            mechanism: str) -> None:
    roundtrip(lib, sbroker.address("SASL_SSL"), _auth("SASL_SSL", mechanism, pki), topic_name)


def test_scram_sha_256_too(sbroker: BrokerProcess, pki: secutil.Pki, topic_name: str) -> None:
    roundtrip("confluent-kafka", sbroker.address("SASL_PLAINTEXT"), _auth("SASL_PLAINTEXT", "SCRAM-SHA-256", pki),
              topic_name)


@pytest.mark.parametrize("lib", LIBS)
def test_clients_over_tls_with_a_self_signed_ca(sbroker: BrokerProcess, pki: secutil.Pki, topic_name: str,
                                                lib: str) -> None:
    auth = secutil.Auth("SSL", pki=pki, client_cert=(lib != "aiokafka"))
    roundtrip(lib, sbroker.address("SSL"), auth, topic_name)


def test_metadata_advertises_the_listener_the_client_used(sbroker: BrokerProcess) -> None:
    from kafka.protocol.metadata import MetadataResponse

    for listener, port in [("PLAINTEXT", sbroker.port)]:
        result = _exchange(port, [MetadataRequest(version=9, topics=[], allow_auto_topic_creation=False,
                                                          include_cluster_authorized_operations=False,
                                                          include_topic_authorized_operations=False)])
        response = MetadataResponse.decode(result.frames[0], version=9, header=True)
        assert [(b.host, b.port) for b in response.brokers] == [("127.0.0.1", port)], listener
    # Over SASL: the broker list names the SASL port (a client must not be sent to the plaintext one).
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**secutil.kafka_python(sbroker.address("SASL_PLAINTEXT"),
                                                    secutil.Auth("SASL_PLAINTEXT", "PLAIN", "alice", USERS["alice"])))
    try:
        cluster = admin.describe_cluster()
        assert [(b["host"], b["port"]) for b in cluster["brokers"]] == \
            [("127.0.0.1", sbroker.listeners["SASL_PLAINTEXT"])]
    finally:
        admin.close()


# ---- what an unauthenticated connection gets -------------------------------------------------------


def _exchange(port: int, requests: list, expect: int | None = None) -> rc.Outcome:
    data = b"".join(rc.encode(r, correlation_id=i + 1) for i, r in enumerate(requests))
    with rc.connect(port) as sock:
        rc.send_all(sock, data)
        return rc.outcome(sock, len(requests) if expect is None else expect, 5.0)


def _metadata() -> MetadataRequest:
    return rc.metadata(None, version=9, allow_auto=False)


def test_unauthenticated_gets_only_api_versions_and_handshake(sbroker: BrokerProcess) -> None:
    port = sbroker.listeners["SASL_PLAINTEXT"]
    # ApiVersions is answered; Metadata before authenticating closes the connection, unanswered.
    result = _exchange(port, [rc.api_versions(3), _metadata()])
    assert len(result.frames) == 1 and result.closed
    assert rc.decode_api_versions(result.frames[0], version=3).error_code == 0
    # The handshake is answered, but it authenticates nothing: Metadata still closes the connection.
    result = _exchange(port, [SaslHandshakeRequest(version=1, mechanism="PLAIN"), _metadata()])
    assert len(result.frames) == 1 and result.closed
    assert SaslHandshakeResponse.decode(result.frames[0], version=1, header=True).error_code == 0
    # Produce, Fetch, CreateTopics: nothing.
    for request in [rc.produce("x", rc.record_batch()), rc.fetch("x"), rc.create_topics("x")]:
        result = _exchange(port, [request], expect=1)
        assert result.closed and not result.frames
    # An unknown mechanism is refused, with the list of those enabled.
    result = _exchange(port, [SaslHandshakeRequest(version=1, mechanism="GSSAPI")])
    response = SaslHandshakeResponse.decode(result.frames[0], version=1, header=True)
    assert response.error_code == 33 and "SCRAM-SHA-512" in response.mechanisms
    # SaslAuthenticate without a handshake: ILLEGAL_SASL_STATE, then closed.
    result = _exchange(port, [SaslAuthenticateRequest(version=2, auth_bytes=b"\x00alice\x00alice-secret")], expect=2)
    assert len(result.frames) == 1 and result.closed


def _plain_login(port: int, user: str, password: str) -> tuple[int, bool]:
    from kafka.protocol.sasl import SaslAuthenticateResponse

    token = b"\x00" + user.encode() + b"\x00" + password.encode()
    result = _exchange(port, [SaslHandshakeRequest(version=1, mechanism="PLAIN"),
                              SaslAuthenticateRequest(version=2, auth_bytes=token), _metadata()], expect=3)
    response = SaslAuthenticateResponse.decode(result.frames[1], version=2, header=True)
    return response.error_code, len(result.frames) == 3


def test_wrong_password_fails_and_closes(sbroker: BrokerProcess) -> None:
    port = sbroker.listeners["SASL_PLAINTEXT"]
    assert _plain_login(port, "alice", USERS["alice"]) == (0, True)
    assert _plain_login(port, "alice", "wrong") == (58, False)  # SASL_AUTHENTICATION_FAILED, connection closed
    assert _plain_login(port, "nobody", "x") == (58, False)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_clients_with_a_wrong_password_fail(sbroker: BrokerProcess, pki: secutil.Pki, topic_name: str, lib: str,
                                            mechanism: str) -> None:
    auth = _auth("SASL_PLAINTEXT", mechanism, pki, password="not-the-password")
    start = sbroker.log_path.stat().st_size
    with pytest.raises(Exception):  # noqa: B017 - each library has its own error for it
        roundtrip(lib, sbroker.address("SASL_PLAINTEXT"), auth, topic_name, timeout_ms=3000)
    with open(sbroker.log_path, "rb") as f:
        f.seek(start)
        assert b"authentication failed from" in f.read()


def test_sasl_handshake_on_a_plaintext_listener_is_refused(sbroker: BrokerProcess) -> None:
    result = _exchange(sbroker.port, [SaslHandshakeRequest(version=1, mechanism="PLAIN")], expect=2)
    assert SaslHandshakeResponse.decode(result.frames[0], version=1, header=True).error_code == 34
    assert result.closed


def test_pre_auth_frames_are_size_limited(sbroker: BrokerProcess) -> None:
    port = sbroker.listeners["SASL_PLAINTEXT"]
    big = rc.raw_frame(18, 3, 1, b"\x00" * (600 * 1024))  # over sasl.server.max.receive.size
    with rc.connect(port) as sock:
        rc.send_all(sock, big)
        assert rc.wait_closed(sock, 5.0)


# ---- credentials: reload and the admin API ---------------------------------------------------------


def test_credentials_file_is_reloaded(sbroker: BrokerProcess, creds_file: Path) -> None:
    port = sbroker.listeners["SASL_PLAINTEXT"]
    assert _plain_login(port, "dave", "dave-1")[0] == 58
    secutil.write_credentials(creds_file, {**USERS, "dave": "dave-1"})
    deadline = time.monotonic() + 10
    while _plain_login(port, "dave", "dave-1")[0] != 0:
        assert time.monotonic() < deadline, "the new user was not picked up"
        time.sleep(0.1)
    # Rotating the password: the old one stops working, the new one works.
    secutil.write_credentials(creds_file, {**USERS, "dave": "dave-2"})
    deadline = time.monotonic() + 10
    while _plain_login(port, "dave", "dave-1")[0] == 0:
        assert time.monotonic() < deadline, "the old password still works"
        time.sleep(0.1)
    assert _plain_login(port, "dave", "dave-2")[0] == 0
    secutil.write_credentials(creds_file, USERS)


def test_scram_credentials_through_the_admin_api(sbroker: BrokerProcess, pki: secutil.Pki, topic_name: str) -> None:
    from kafka.admin import (
        KafkaAdminClient,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )

    admin = KafkaAdminClient(**secutil.kafka_python(sbroker.address("SASL_PLAINTEXT"),
                                                    _auth("SASL_PLAINTEXT", "SCRAM-SHA-512", pki, "admin")))
    try:
        result = admin.alter_user_scram_credentials([
            UserScramCredentialUpsertion("carol", ScramMechanism.SCRAM_SHA_512, "carol-pw", iterations=8192)])
        assert result == {"carol": None}
        described = admin.describe_user_scram_credentials(["carol", "alice", "ghost"])
        assert described["carol"]["credential_infos"] == [
            {"mechanism": ScramMechanism.SCRAM_SHA_512, "iterations": 8192}]
        assert {i["mechanism"] for i in described["alice"]["credential_infos"]} == \
            {ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512}
        assert described["ghost"]["error"]
        # carol can log in with SCRAM-SHA-512 (and PLAIN, checked against the SCRAM hash), not SHA-256.
        roundtrip("confluent-kafka", sbroker.address("SASL_PLAINTEXT"),
                  secutil.Auth("SASL_PLAINTEXT", "SCRAM-SHA-512", "carol", "carol-pw"), topic_name)
        port = sbroker.listeners["SASL_PLAINTEXT"]
        assert _plain_login(port, "carol", "carol-pw")[0] == 0
        assert _plain_login(port, "carol", "wrong")[0] == 58
        # confluent-kafka's admin client sees her too.
        from confluent_kafka.admin import AdminClient

        cadmin = AdminClient(secutil.confluent(sbroker.address("SASL_PLAINTEXT"),
                                               _auth("SASL_PLAINTEXT", "SCRAM-SHA-512", pki, "admin")))
        futures = cadmin.describe_user_scram_credentials(["carol"])
        info = futures["carol"].result(15)
        assert [(c.mechanism.name, c.iterations) for c in info.scram_credential_infos] == [("SCRAM_SHA_512", 8192)]
        result = admin.alter_user_scram_credentials([
            UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_512)])
        assert result == {"carol": None}
        assert _plain_login(port, "carol", "carol-pw")[0] == 58
        # Too few iterations are refused, as Kafka does.
        result = admin.alter_user_scram_credentials([
            UserScramCredentialUpsertion("erin", ScramMechanism.SCRAM_SHA_256, "pw", iterations=100)])
        assert result["erin"]
    finally:
        admin.close()
