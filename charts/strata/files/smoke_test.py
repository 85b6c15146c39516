"""`helm test`: produce one record to the installed broker and consume it back.

Usage: python smoke_test.py BOOTSTRAP TOPIC [TIMEOUT_SECONDS]. Runs in the broker image (which
carries confluent-kafka); tests/integration/operator/test_chart.py also runs it against a local broker. Credentials, when
the broker authenticates, come from KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME
and KAFKA_SASL_PASSWORD, and over TLS the CA file from KAFKA_SSL_CA_LOCATION (the names a Microservice's
Secret uses).
"""

import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main(bootstrap: str, topic: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    conf = {"bootstrap.servers": bootstrap, "client.id": "strata-helm-test"}
    for env, key in (("KAFKA_SECURITY_PROTOCOL", "security.protocol"), ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
                     ("KAFKA_SASL_USERNAME", "sasl.username"), ("KAFKA_SASL_PASSWORD", "sasl.password"),
                     ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location")):
        if os.environ.get(env):
            conf[key] = os.environ[env]
    admin = AdminClient(conf)
    while True:  # the brokers may still be starting right after `helm install`
        try:
            brokers = admin.list_topics(timeout=5).brokers
            if brokers:
                break
        except KafkaException as exc:
            print(f"waiting for {bootstrap}: {exc}", flush=True)
        if time.monotonic() > deadline:
            print(f"FAIL: no broker answered at {bootstrap} within {timeout:.0f}s", flush=True)
            return 1
        time.sleep(2)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    value = uuid.uuid4().hex.encode()
    delivered = []
    producer = Producer({**conf, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, key=b"helm-test", value=value,
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(30)
    if not delivered or delivered[0][0] is not None:
        print(f"FAIL: produce to {topic!r}: {delivered[0][0] if delivered else 'no delivery report'}", flush=True)
        return 1
    msg = delivered[0][1]
    consumer = Consumer({**conf, "group.id": f"strata-helm-test-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, msg.partition(), msg.offset())])
    got = None
    while got is None and time.monotonic() < deadline:
        record = consumer.poll(1.0)
        if record is not None and record.error() is None and record.value() == value:
            got = record
    consumer.close()
    try:
        admin.delete_topics([topic])[topic].result(30)
    except KafkaException as exc:
        print(f"note: could not delete {topic!r}: {exc}", flush=True)
    if got is None:
        print(f"FAIL: the record produced at {topic}/{msg.partition()}@{msg.offset()} was not consumed", flush=True)
        return 1
    print(f"OK: produced and consumed one record through {bootstrap} "
          f"({topic}/{msg.partition()}@{msg.offset()})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 180.0))
