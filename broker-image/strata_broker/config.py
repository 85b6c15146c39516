"""Broker properties and topic configs, Kafka-style (`--set key=value`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _cleanup_policy(value: str) -> str:
    parts = sorted(p.strip() for p in value.split(",") if p.strip())
    if not parts or any(p not in ("compact", "delete") for p in parts):
        raise ValueError(f"cleanup.policy must be delete, compact or both: {value!r}")
    return ",".join(parts)


def _timestamp_type(value: str) -> str:
    if value not in ("CreateTime", "LogAppendTime"):
        raise ValueError(f"must be CreateTime or LogAppendTime, got {value!r}")
    return value


COMPRESSION_TYPES = ("producer", "uncompressed", "none", "gzip", "snappy", "lz4", "zstd")


def _compression_type(value: str) -> str:
    if value not in COMPRESSION_TYPES:
        raise ValueError(f"must be one of {', '.join(COMPRESSION_TYPES)}, got {value!r}")
    return value


def _int_between(low: int, high: int, *also: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number not in also and not low <= number <= high:
            raise ValueError(f"must be in [{low}, {high}], got {number}")
        return number

    return parse


def _throttled_replicas(value: str) -> str:
    """Kafka's form: empty, `*`, or `partition:broker,...`."""
    text = value.strip()
    if text in ("", "*"):
        return text
    for item in text.split(","):
        partition, sep, broker = item.strip().partition(":")
        if not sep or not partition.isdigit() or not broker.isdigit():
            raise ValueError(f"expected *, or PARTITION:BROKER,... got {value!r}")
    return text


def _durability(value: str) -> str:
    if value not in ("disk", "s3"):
        raise ValueError("strata.durability must be disk or s3")
    return value


def _ratio(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {number}")
    return number


def _assignors(value: str) -> str:
    """group.consumer.assignors: names (or Kafka class names) of assignors Strata has."""
    from .groups.assignors import assignor_names

    assignor_names(value)
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise ValueError(f"must be >= {minimum}, got {number}")
        return number

    return parse


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    host: str
    port: int


def parse_listener(text: str) -> ListenerSpec:
    """`NAME://HOST:PORT` (or a bare `HOST:PORT`, which is PLAINTEXT)."""
    name, sep, rest = text.strip().partition("://")
    if not sep:
        name, rest = "PLAINTEXT", text.strip()
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not name:
        raise ValueError(f"expected NAME://HOST:PORT, got {text!r}")
    return ListenerSpec(name.upper(), host.strip("[]"), int(port))


def parse_listeners(value: str) -> tuple[ListenerSpec, ...]:
    specs = tuple(parse_listener(part) for part in value.split(",") if part.strip())
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a listener name appears twice: {value!r}")
    return specs


def parse_protocol_map(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        if not part.strip():
            continue
        name, sep, proto = part.partition(":")
        if not sep or proto.strip().upper() not in SECURITY_PROTOCOLS:
            raise ValueError(f"expected NAME:PROTOCOL with PROTOCOL in {SECURITY_PROTOCOLS}, got {part!r}")
        out[name.strip().upper()] = proto.strip().upper()
    return out


CLIENT_AUTH_MODES = ("none", "requested", "required")


def parse_client_auth_map(value: str) -> dict[str, str]:
    """`NAME:MODE,...` (ssl.client.auth.listener.map): a TLS listener's own ssl.client.auth."""
    out = {}
    for part in value.split(","):
        if not part.strip():
            continue
        name, sep, mode = part.partition(":")
        if not sep or mode.strip().lower() not in CLIENT_AUTH_MODES:
            raise ValueError(f"expected NAME:MODE with MODE in {CLIENT_AUTH_MODES}, got {part!r}")
        out[name.strip().upper()] = mode.strip().lower()
    return out


def parse_mechanisms(value: str) -> tuple[str, ...]:
    mechs = tuple(m.strip().upper() for m in value.split(",") if m.strip())
    for m in mechs:
        if m not in SASL_MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {m!r} (supported: {', '.join(SASL_MECHANISMS)})")
    return mechs


def _validated(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """Keep the text (DescribeConfigs shows it and parses it again) once `parse` accepts it."""
    def check(value: str) -> str:
        parse(value)
        return value.strip()

    return check


_listeners = _validated(parse_listeners)
_protocol_map = _validated(parse_protocol_map)
_mechanisms = _validated(parse_mechanisms)
_client_auth_map = _validated(parse_client_auth_map)

# Broker properties DescribeConfigs never shows the value of.
SENSITIVE_CONFIGS = frozenset({"ssl.key.password"})


def _endpoint_identification(value: str) -> str:
    if value.strip().lower() not in ("https", ""):
        raise ValueError("ssl.endpoint.identification.algorithm must be https or empty")
    return value.strip().lower()


def _client_auth(value: str) -> str:
    if value not in CLIENT_AUTH_MODES:
        raise ValueError("ssl.client.auth must be none, requested or required")
    return value


@dataclass(frozen=True)
class ConfigKey:
    name: str
    parse: Callable[[str], Any]
    default: str
    doc: str


# Topic-level configs; a broker-level `--set` of the same name sets the cluster default.
TOPIC_CONFIGS: dict[str, ConfigKey] = {
    k.name: k
    for k in [
        ConfigKey("segment.bytes", _int_at_least(1024), str(1 << 30), "roll a segment at this size"),
        ConfigKey("segment.ms", _int_at_least(1), str(7 * 24 * 3600 * 1000), "roll a segment this old"),
        ConfigKey("retention.ms", _int_at_least(-1), str(7 * 24 * 3600 * 1000), "-1 keeps forever"),
        ConfigKey("retention.bytes", _int_at_least(-1), "-1", "per partition; -1 keeps all"),
        ConfigKey("cleanup.policy", _cleanup_policy, "delete", "delete | compact | compact,delete"),
        ConfigKey("max.message.bytes", _int_at_least(0), str(1048588), "largest record batch"),
        ConfigKey("index.interval.bytes", _int_at_least(0), "4096", "bytes between index entries"),
        ConfigKey("message.timestamp.type", _timestamp_type, "CreateTime",
                  "CreateTime (the producer's) | LogAppendTime (the broker stamps each batch as it appends it)"),
        # Tiered storage (KIP-405 names). The default of remote.storage.enable follows
        # whether the broker has a bucket; -2 for local retention means "same as total".
        ConfigKey("remote.storage.enable", _bool, "false", "offload closed segments to S3"),
        ConfigKey("local.retention.ms", _int_at_least(-2), "-2", "hot retention on disk; -2 = retention.ms"),
        ConfigKey("local.retention.bytes", _int_at_least(-2), "-2", "hot bytes on disk; -2 = retention.bytes"),
        ConfigKey("strata.durability", _durability, "disk", "acks=all waits for: disk (fsync) or s3"),
        # Compaction (cleanup.policy=compact).
        ConfigKey("min.cleanable.dirty.ratio", _ratio, "0.5", "clean when this share of the log is dirty"),
        ConfigKey("min.compaction.lag.ms", _int_at_least(0), "0", "records younger than this stay uncompacted"),
        ConfigKey("max.compaction.lag.ms", _int_at_least(1), str(2**63 - 1),
                  "a dirty record is compacted within this, whatever the ratio"),
        ConfigKey("delete.retention.ms", _int_at_least(0), str(24 * 3600 * 1000),
                  "tombstones stay readable this long (by their timestamp) so slow readers see deletes"),
        # Schema-checked topics (strata_broker/schemas.py): records must carry a schema id registered
        # under <topic>-value / <topic>-key.
        ConfigKey("strata.value.schema.validation", _bool, "false", "refuse values without a registered schema id"),
        ConfigKey("strata.key.schema.validation", _bool, "false", "refuse keys without a registered schema id"),
        # compression.type: a codec makes the broker recompress batches stored with another one
        # (log/produce_checks.py), at compression.<codec>.level; `producer` keeps them as sent.
        ConfigKey("compression.type", _compression_type, "producer",
                  "producer keeps each batch's codec; a codec (uncompressed, gzip, snappy, lz4, zstd) makes the "
                  "broker recompress batches that use another"),
        ConfigKey("compression.gzip.level", _int_between(1, 9, -1), "-1", "gzip level when the broker recompresses"),
        ConfigKey("compression.lz4.level", _int_between(1, 17), "9", "lz4 level when the broker recompresses"),
        ConfigKey("compression.zstd.level", _int_between(-131072, 22), "3", "zstd level when the broker recompresses"),
        # Kafka's other topic configs (docs/kafka-compatibility.md "Topic configs"): accepted, validated as
        # Kafka validates them and described with Kafka's defaults. Strata keeps one copy of each partition
        # (durable by fsync or S3, no followers or ISR) and has no per-topic flush, preallocation or index
        # sizing, so these change nothing.
        ConfigKey("min.insync.replicas", _int_at_least(1), "1",
                  "accepted; one copy made durable by fsync or S3 acknowledges acks=all"),
        ConfigKey("unclean.leader.election.enable", _bool, "false",
                  "accepted; a new leader takes over from the copy in S3, never from a lagging replica"),
        ConfigKey("leader.replication.throttled.replicas", _throttled_replicas, "", "accepted; no replication"),
        ConfigKey("follower.replication.throttled.replicas", _throttled_replicas, "", "accepted; no replication"),
        ConfigKey("message.timestamp.before.max.ms", _int_at_least(0), str(2**63 - 1),
                  "CreateTime records older than this (by the broker's clock) are refused: INVALID_TIMESTAMP"),
        ConfigKey("message.timestamp.after.max.ms", _int_at_least(0), "3600000",
                  "CreateTime records further than this in the future are refused: INVALID_TIMESTAMP"),
        ConfigKey("flush.messages", _int_at_least(1), str(2**63 - 1),
                  "accepted; acks=all fsyncs (or commits to S3) before answering"),
        ConfigKey("flush.ms", _int_at_least(0), str(2**63 - 1), "accepted; see log.flush.interval.ms"),
        ConfigKey("file.delete.delay.ms", _int_at_least(0), "60000", "accepted; segments are deleted at once"),
        ConfigKey("preallocate", _bool, "false", "accepted; segment files grow as written"),
        ConfigKey("segment.index.bytes", _int_at_least(4), str(10 * 1024 * 1024),
                  "accepted; index files grow as needed"),
        ConfigKey("segment.jitter.ms", _int_at_least(0), "0", "accepted; segments roll at segment.ms"),
        ConfigKey("remote.log.copy.disable", _bool, "false", "accepted; see remote.storage.enable"),
        ConfigKey("remote.log.delete.on.disable", _bool, "false", "accepted; see remote.storage.enable"),
        ConfigKey("remote.copy.lag.ms", _int_at_least(-1), "0", "accepted; see tiered.upload.interval.ms"),
        ConfigKey("remote.copy.lag.bytes", _int_at_least(-1), "-1", "accepted; see tiered.upload.interval.ms"),
        ConfigKey("max.decompressed.message.bytes", _int_at_least(0), "2147483639",
                  "accepted; the broker does not decompress batches"),
        ConfigKey("errors.deadletterqueue.group.enable", _bool, "false", "accepted; no share groups"),
    ]
}

# Broker-only properties.
BROKER_CONFIGS: dict[str, ConfigKey] = {
    k.name: k
    for k in [
        ConfigKey("auto.create.topics.enable", _bool, "true", "create topics on first use"),
        ConfigKey("num.partitions", _int_at_least(1), "1", "partitions of an auto-created topic"),
        ConfigKey("default.replication.factor", _int_at_least(1), "1", "accepted; one broker holds data"),
        ConfigKey("socket.request.max.bytes", _int_at_least(1024), str(100 * 1024 * 1024), "largest frame"),
        ConfigKey("queued.max.requests", _int_at_least(1), "32",
                  "in-flight requests per connection (bounds the responses held for a slow reader)"),
        ConfigKey("queued.max.request.bytes", int, str(512 * 1024 * 1024),
                  "request bytes in flight across all connections; a large frame's announced size is "
                  "reserved before it is read (-1 = unbounded)"),
        ConfigKey("log.retention.check.interval.ms", _int_at_least(10), "300000", "retention sweep period"),
        ConfigKey("log.flush.interval.ms", _int_at_least(0), "1000", "background fsync period; 0 = off"),
        ConfigKey("log.segment.handles.max", _int_at_least(0), "0",
                  "segments whose files stay open (1 descriptor each), least recently used closed first; "
                  "0 = min(4096, open-files limit / 2)"),
        ConfigKey("log.append.buffer.ms", _int_at_least(0), "0",
                  "write-behind: appends wait in memory at most this long before they are written to the "
                  "segment file (sooner at 128 KiB a partition or 64 MiB in all, and before every fsync: "
                  "acks=all is unaffected; a kill -9 loses up to this long of acks=0/1 writes); "
                  "0 = every append is written through before it is answered"),
        ConfigKey("connections.max.idle.ms", _int_at_least(0), "600000", "close idle connections"),
        ConfigKey("cluster.id", str, "strata-local", "cluster id shown to clients"),
        # Cluster mode (docs/cluster.md): several brokers, one bucket, placement from a controller.
        ConfigKey("cluster.placement.file", str, "",
                  "placement document written by the controller (a mounted ConfigMap); empty = one broker"),
        ConfigKey("cluster.lease.ms", _int_at_least(300), "9000",
                  "a broker stops accepting writes this long after its last lease renewal (renewed every third)"),
        ConfigKey("metrics.listen", str, "", "HOST:PORT for Prometheus /metrics (:PORT = loopback); empty = off"),
        ConfigKey("metrics.bearer.token.file", str, "",
                  "file holding a token /metrics then requires (Authorization: Bearer ...)"),
        ConfigKey("metrics.ssl.certfile", str, "", "PEM certificate: /metrics over HTTPS (with metrics.ssl.keyfile)"),
        ConfigKey("metrics.ssl.keyfile", str, "", "PEM private key for metrics.ssl.certfile"),
        ConfigKey("log.cleaner.enable", _bool, "true", "compact topics with cleanup.policy=compact"),
        ConfigKey("metering.snapshot.interval.ms", _int_at_least(100), "60000",
                  "usage records are cut and written this often (and at UTC midnight)"),
        ConfigKey("metering.sample.interval.ms", _int_at_least(100), "5000",
                  "storage bytes and connections are sampled this often for byte-hours"),
        ConfigKey("metering.client.ids.per.principal", _int_at_least(1), "100",
                  "client ids metered under their own name per principal; the rest count as 'other'"),
        ConfigKey("metering.idle.expiry.ms", _int_at_least(1000), "3600000",
                  "a client id not seen for this long is forgotten by metering and /metrics"),
        ConfigKey("log.cleaner.backoff.ms", _int_at_least(10), "15000", "pause between cleaner passes"),
        ConfigKey("log.cleaner.io.max.bytes.per.second", _int_at_least(1024), str(100 << 20),
                  "I/O budget of the cleaner (read + written)"),
        ConfigKey("tiered.compaction.delete.delay.ms", _int_at_least(0), "60000",
                  "objects replaced by compaction are deleted this long after the manifest swap"),
        # Consumer groups (Kafka's names and defaults, except where noted).
        ConfigKey("group.min.session.timeout.ms", _int_at_least(1), "6000", "shortest session a member may ask"),
        ConfigKey("group.max.session.timeout.ms", _int_at_least(1), "1800000", "longest session a member may ask"),
        # Kafka waits 3000 ms for more members; one local broker answers the first join at once.
        ConfigKey("group.initial.rebalance.delay.ms", _int_at_least(0), "0", "wait for more members first"),
        ConfigKey("group.max.size", _int_at_least(1), str(2**31 - 1), "members per group"),
        # The KIP-848 consumer group protocol (groups/consumer_group.py), Kafka's names and defaults.
        ConfigKey("group.consumer.heartbeat.interval.ms", _int_at_least(1), "5000",
                  "how often consumer-protocol members heartbeat"),
        ConfigKey("group.consumer.session.timeout.ms", _int_at_least(1), "45000",
                  "a consumer-protocol member silent this long is removed"),
        ConfigKey("group.consumer.assignors", _assignors,
                  "uniform,range", "server-side assignors; the first is the default"),
        ConfigKey("group.consumer.max.size", _int_at_least(1), str(2**31 - 1), "members per consumer group"),
        ConfigKey("offsets.topic.num.partitions", _int_at_least(1), "50", "partitions of __consumer_offsets"),
        ConfigKey("offset.metadata.max.bytes", _int_at_least(0), "4096", "metadata per committed offset"),
        ConfigKey("offsets.retention.minutes", _int_at_least(1), str(7 * 24 * 60),
                  "committed offsets of an empty group expire after this"),
        ConfigKey("group.coordinator.tick.ms", _int_at_least(10), "100", "session expiry check period"),
        # Transactions (Kafka's names and defaults).
        ConfigKey("transaction.max.timeout.ms", _int_at_least(1), "900000",
                  "longest transaction.timeout.ms a producer may ask"),
        ConfigKey("transaction.state.log.num.partitions", _int_at_least(1), "50",
                  "partitions of __transaction_state"),
        ConfigKey("transaction.abort.timed.out.transaction.cleanup.interval.ms", _int_at_least(10), "10000",
                  "how often the coordinator aborts transactions past their timeout"),
        ConfigKey("transactional.id.expiration.ms", _int_at_least(1), str(7 * 24 * 3600 * 1000),
                  "a transactional id idle (no open transaction) this long is removed"),
        ConfigKey("transaction.remove.expired.transaction.cleanup.interval.ms", _int_at_least(10), "3600000",
                  "how often the coordinator removes expired transactional ids"),
        ConfigKey("tiered.s3.bucket", str, "", "S3 bucket for closed segments; empty = no tiering"),
        ConfigKey("tiered.s3.prefix", str, "", "key prefix inside the bucket"),
        ConfigKey("tiered.s3.endpoint", str, "", "S3 endpoint URL; empty = AWS"),
        ConfigKey("tiered.s3.region", str, "us-east-1", "S3 region"),
        ConfigKey("tiered.upload.interval.ms", _int_at_least(100), "300000",
                  "a non-empty active segment is rolled and uploaded at least this often"),
        ConfigKey("tiered.cache.bytes", _int_at_least(0), str(256 << 20), "on-disk cache of remote chunks"),
        ConfigKey("tiered.cache.admit.downloads", _int_at_least(1), "2",
                  "a chunk is written to the disk cache on this download of it (1: on every download)"),
        ConfigKey("tiered.chunk.bytes", _int_at_least(64 << 10), str(8 << 20),
                  "unit of cold reads and of the chunk cache (a read-ahead run of chunks is one GET)"),
        ConfigKey("tiered.prefetch.chunks", _int_at_least(0), "6", "chunks read ahead of a sequential reader"),
        ConfigKey("tiered.download.process", _bool, "true",
                  "cold chunks are received by a child process into shared memory (false: by the broker itself)"),
        ConfigKey("tiered.fetch.timeout.ms", _int_at_least(100), "10000", "a remote read gives up after this"),
        ConfigKey("tiered.upload.concurrency", _int_at_least(1), "4", "segments uploaded at once"),
        ConfigKey("tiered.s3.commit.interval.ms", _int_at_least(1), "50",
                  "strata.durability=s3: how long acks=all batches gather before one S3 write"),
        # Listeners and security (docs/security.md). `--listen` adds to `listeners`.
        ConfigKey("listeners", _listeners, "",
                  "NAME://HOST:PORT,... (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL or a mapped name)"),
        ConfigKey("advertised.listeners", _listeners, "", "NAME://HOST:PORT,... told to clients, per listener"),
        ConfigKey("listener.security.protocol.map", _protocol_map, "",
                  "extra NAME:PROTOCOL pairs for listener names that are not a protocol"),
        ConfigKey("inter.broker.listener.name", str, "",
                  "cluster mode: the listener brokers send each other WriteTxnMarkers on (any protocol; SASL "
                  "as strata-broker, TLS trusting ssl.ca.location); empty: the first PLAINTEXT or "
                  "SASL_PLAINTEXT listener, else the first SSL or SASL_SSL one"),
        ConfigKey("sasl.enabled.mechanisms", _mechanisms, "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
                  "SASL mechanisms offered on SASL listeners"),
        ConfigKey("sasl.credentials.file", str, "",
                  "JSON user credentials (mounted from a Secret); reloaded on change"),
        ConfigKey("sasl.credentials.reload.ms", _int_at_least(50), "1000", "how often the credentials file is checked"),
        ConfigKey("sasl.server.max.receive.size", _int_at_least(64), "524288",
                  "largest frame accepted before a SASL connection has authenticated"),
        ConfigKey("authorizer.enable", _bool, "false", "enforce ACLs (off for make run, on in the chart)"),
        ConfigKey("schema.registry.principal", str, "",
                  "principal the schema registry connects as: it may write the internal _schemas topic"),
        ConfigKey("super.users", str, "", "semicolon-separated principals allowed everything, e.g. User:admin"),
        ConfigKey("allow.everyone.if.no.acl.found", _bool, "false",
                  "with the authorizer on: a resource no ACL matches is open to everyone"),
        ConfigKey("ssl.certificate.location", str, "", "PEM certificate chain of the SSL listeners"),
        ConfigKey("ssl.key.location", str, "", "PEM private key (default: in ssl.certificate.location)"),
        ConfigKey("ssl.key.password", str, "", "password of the private key, if encrypted"),
        ConfigKey("ssl.ca.location", str, "", "PEM CA bundle that client certificates are verified against"),
        ConfigKey("ssl.client.auth", _client_auth, "none", "none | requested | required"),
        ConfigKey("ssl.certificate.reload.ms", _int_at_least(100), "5000",
                  "how often the certificate, key and CA files are checked; a renewed certificate (e.g. by "
                  "cert-manager) is used for new connections"),
        ConfigKey("ssl.client.auth.listener.map", _client_auth_map, "",
                  "NAME:none|requested|required,...: a TLS listener's own ssl.client.auth (e.g. one mTLS "
                  "listener beside a SASL_SSL one)"),
        ConfigKey("ssl.reserved.principals", str, "",
                  "semicolon-separated principals no client certificate can authenticate as (e.g. the operator's "
                  "User:strata-operator): a connection whose certificate maps to one is closed"),
        ConfigKey("ssl.handshake.timeout.ms", _int_at_least(100), "10000", "a TLS handshake must finish in this"),
        ConfigKey("ssl.endpoint.identification.algorithm", _endpoint_identification, "https",
                  "inter-broker requests over a TLS listener: https checks that the peer's certificate names "
                  "the host it is reached at; empty: the chain is still verified against ssl.ca.location"),
        ConfigKey("connection.failed.authentication.delay.ms", _int_at_least(0), "100",
                  "a failed authentication is answered, then the connection closed after this"),
        ConfigKey("sasl.auth.threads", _int_at_least(1), "2",
                  "threads that check passwords (PBKDF2), off the event loop"),
        ConfigKey("sasl.failed.authentication.backoff.max.ms", _int_at_least(0), "2000",
                  "longest wait before an authentication step from an address with more than 20 failures in "
                  "10 s (100 ms, doubling per failure); 0 = none"),
        ConfigKey("max.connections", _int_at_least(1), "10000", "open client connections, all listeners"),
        ConfigKey("max.connections.per.ip", _int_at_least(1), "1000", "open client connections per source IP"),
        ConfigKey("request.timeout.ms", _int_at_least(100), "30000",
                  "a request must arrive whole (and a SASL client authenticate) within this"),
        ConfigKey("quota.window.num", _int_at_least(2), "11", "quota rate samples kept"),
        ConfigKey("quota.window.size.seconds", _int_at_least(1), "1", "length of one quota sample"),
    ]
}

# Broker properties that may also come from the environment: STRATA_TIERED_S3_BUCKET etc.
ENV_PREFIX = "STRATA_"


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name in BROKER_CONFIGS:
        env_name = ENV_PREFIX + name.upper().replace(".", "_")
        if env_name in environ:
            out[name] = environ[env_name]
    return out

# Kafka's broker property names for topic defaults (server.properties style).
BROKER_ALIASES = {
    "log.segment.bytes": "segment.bytes",
    "log.roll.ms": "segment.ms",
    "log.retention.ms": "retention.ms",
    "log.retention.bytes": "retention.bytes",
    "log.cleanup.policy": "cleanup.policy",
    "message.max.bytes": "max.message.bytes",
    "log.index.interval.bytes": "index.interval.bytes",
    "log.message.timestamp.type": "message.timestamp.type",
    "log.cleaner.min.cleanable.ratio": "min.cleanable.dirty.ratio",
    "log.cleaner.min.compaction.lag.ms": "min.compaction.lag.ms",
    "log.cleaner.max.compaction.lag.ms": "max.compaction.lag.ms",
    "log.cleaner.delete.retention.ms": "delete.retention.ms",
    "log.local.retention.ms": "local.retention.ms",
    "log.local.retention.bytes": "local.retention.bytes",
    "log.message.timestamp.before.max.ms": "message.timestamp.before.max.ms",
    "log.message.timestamp.after.max.ms": "message.timestamp.after.max.ms",
    "log.flush.interval.messages": "flush.messages",
    "log.segment.delete.delay.ms": "file.delete.delay.ms",
    "log.preallocate": "preallocate",
    "log.index.size.max.bytes": "segment.index.bytes",
    "log.roll.jitter.ms": "segment.jitter.ms",
}

# The broker property Kafka names each topic default by (DescribeConfigs of a broker, and synonyms).
BROKER_NAME_OF_TOPIC_CONFIG = {topic_name: broker_name for broker_name, topic_name in BROKER_ALIASES.items()}


class ConfigError(ValueError):
    pass


def parse_topic_config(name: str, value: str) -> Any:
    key = TOPIC_CONFIGS.get(name)
    if key is None:
        raise ConfigError(f"unknown topic config {name!r}")
    try:
        return key.parse(value)
    except ValueError as exc:
        raise ConfigError(f"invalid value for {name}: {exc}") from exc


@dataclass
class BrokerConfig:
    """Resolved broker properties plus the cluster-wide topic defaults."""

    props: dict[str, Any] = field(default_factory=dict)
    topic_defaults: dict[str, str] = field(default_factory=dict)
    # Names (broker properties, and topic configs by their topic name) set by the operator rather
    # than left at the default: DescribeConfigs reports these STATIC_BROKER_CONFIG, the rest DEFAULT_CONFIG.
    explicit: frozenset[str] = frozenset()

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, str]) -> BrokerConfig:
        props = {name: key.parse(key.default) for name, key in BROKER_CONFIGS.items()}
        topic_defaults = {name: key.default for name, key in TOPIC_CONFIGS.items()}
        bucket = overrides.get("tiered.s3.bucket", "")
        topic_defaults["remote.storage.enable"] = "true" if bucket else "false"
        explicit = set()
        for raw_name, value in overrides.items():
            name = BROKER_ALIASES.get(raw_name, raw_name)
            explicit.add(name)
            if name in BROKER_CONFIGS:
                try:
                    props[name] = BROKER_CONFIGS[name].parse(value)
                except ValueError as exc:
                    raise ConfigError(f"invalid value for {raw_name}: {exc}") from exc
            elif name in TOPIC_CONFIGS:
                parse_topic_config(name, value)
                topic_defaults[name] = value
            else:
                raise ConfigError(f"unknown property {raw_name!r}")
        return cls(props=props, topic_defaults=topic_defaults, explicit=frozenset(explicit))

    def __getitem__(self, name: str) -> Any:
        return self.props[name]

    def resolve_topic(self, overrides: Mapping[str, str]) -> TopicConfig:
        merged = dict(self.topic_defaults)
        merged.update(overrides)
        return TopicConfig({name: parse_topic_config(name, value) for name, value in merged.items()})


@dataclass(frozen=True)
class TopicConfig:
    values: dict[str, Any]

    @property
    def segment_bytes(self) -> int:
        return self.values["segment.bytes"]

    @property
    def segment_ms(self) -> int:
        return self.values["segment.ms"]

    @property
    def retention_ms(self) -> int:
        return self.values["retention.ms"]

    @property
    def retention_bytes(self) -> int:
        return self.values["retention.bytes"]

    @property
    def max_message_bytes(self) -> int:
        return self.values["max.message.bytes"]

    @property
    def index_interval_bytes(self) -> int:
        return self.values["index.interval.bytes"]

    @property
    def log_append_time(self) -> bool:
        return self.values["message.timestamp.type"] == "LogAppendTime"

    @property
    def remote_storage(self) -> bool:
        return self.values["remote.storage.enable"]

    @property
    def local_retention_ms(self) -> int:
        value = self.values["local.retention.ms"]
        return self.retention_ms if value == -2 else value

    @property
    def local_retention_bytes(self) -> int:
        value = self.values["local.retention.bytes"]
        return self.retention_bytes if value == -2 else value

    @property
    def durability(self) -> str:
        return self.values["strata.durability"]

    @property
    def compacted(self) -> bool:
        return "compact" in self.values["cleanup.policy"].split(",")

    @property
    def deletes(self) -> bool:
        return "delete" in self.values["cleanup.policy"].split(",")
