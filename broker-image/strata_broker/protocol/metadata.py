"""ApiVersions, Metadata and DescribeCluster: how clients discover the broker and its topics."""

from __future__ import annotations

import struct
import uuid
from typing import Any

from kafka.protocol.admin import DescribeClusterRequest, DescribeClusterResponse
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse
from kafka.protocol.schemas.fields.codecs.types import UnsignedVarInt32

from ..errors import ErrorCode, KafkaProtocolError
from ..groups.txn_v2 import FEATURES, FEATURES_EPOCH
from ..log.manager import is_internal_name, validate_topic_name
from ..security.acl import CLUSTER_NAME, OP_CREATE, OP_DESCRIBE, RES_CLUSTER, RES_TOPIC
from .context import RequestContext
from .registry import API_TABLE, api

APIVERSIONS_MAX = 4
_ZERO_UUID = uuid.UUID(int=0)
_INT32 = struct.Struct(">i")
# The codec of Metadata's topics array (one topic is encoded as an array of one, its count cut off).
_TOPICS = MetadataResponse.MetadataResponseTopic._struct


def api_versions_response(version: int, error: ErrorCode = ErrorCode.NONE) -> ApiVersionsResponse:
    """The API table, and from v3 the features (KIP-584): supported ranges and the finalized
    levels, `transaction.version` 2 (groups/txn_v2.py). As Kafka, v3 leaves out a supported range
    that starts at 0 (KAFKA-17011: older clients refuse it)."""
    R = ApiVersionsResponse
    keys = [
        R.ApiVersion(api_key=spec.key, min_version=spec.min_version, max_version=spec.max_version)
        for spec in sorted(API_TABLE.values(), key=lambda s: s.key)
    ]
    response = R(version=version, error_code=int(error), api_keys=keys, throttle_time_ms=0)
    if version >= 3 and error == ErrorCode.NONE:
        response.supported_features = [R.SupportedFeatureKey(name=name, min_version=low, max_version=high)
                                       for name, low, high, _ in FEATURES if low > 0 or version >= 4]
        response.finalized_features_epoch = FEATURES_EPOCH
        response.finalized_features = [R.FinalizedFeatureKey(name=name, min_version_level=level,
                                                             max_version_level=level)
                                       for name, _, _, level in FEATURES if level > 0]
    return response


@api(ApiVersionsRequest, ApiVersionsResponse, 0, APIVERSIONS_MAX)
async def handle_api_versions(ctx: RequestContext, request: ApiVersionsRequest) -> ApiVersionsResponse:
    return api_versions_response(ctx.api_version)


@api(MetadataRequest, MetadataResponse, 0, 12)
async def handle_metadata(ctx: RequestContext, request: MetadataRequest) -> MetadataResponse:
    broker = ctx.services
    logs = broker.logs
    leadership = broker.leadership
    R = MetadataResponse
    wanted = request.topics
    denied: set[uuid.UUID] = set()
    # v0 asks for every topic with an empty list; v1+ with null.
    if wanted is None or (ctx.api_version == 0 and not wanted):
        # Every topic the principal may describe; the others are not mentioned at all.
        names: list[str | uuid.UUID] = [t for t in logs.topics if ctx.authorize(OP_DESCRIBE, RES_TOPIC, t)]
        auto_create = False
    else:
        names = []
        for entry in wanted:
            if entry.name is None and entry.topic_id not in (None, _ZERO_UUID):
                topic = logs.topic_by_id(entry.topic_id)
                # An id no topic has is answered as such (UNKNOWN_TOPIC_ID), by its id; so is the id of a
                # topic the principal may not describe, with TOPIC_AUTHORIZATION_FAILED and no name (as Kafka).
                if topic is not None and not ctx.authorize(OP_DESCRIBE, RES_TOPIC, topic.name):
                    denied.add(entry.topic_id)
                    names.append(entry.topic_id)
                else:
                    names.append(topic.name if topic else entry.topic_id)
            else:
                names.append(entry.name or "")
        auto_create = ctx.api_version < 4 or bool(request.allow_auto_topic_creation)
    topics: list[bytes] = []  # each topic encoded (from its cache when it has one)
    version = ctx.api_version
    for name in names:
        # Cluster mode: a topic this broker has not heard of yet may exist already; it is not
        # created twice (the client asks again once the placement has reached this broker).
        elsewhere = (auto_create and isinstance(name, str) and name not in logs.topics
                     and await leadership.exists_elsewhere(name))
        if name in denied:
            refused = R.MetadataResponseTopic(error_code=int(ErrorCode.TOPIC_AUTHORIZATION_FAILED), name=None,
                                              topic_id=name, partitions=[])
            topics.append(_encode_topic(refused, version))
            continue
        topics.append(_describe_topic(ctx, name, auto_create and not elsewhere, elsewhere))
        if auto_create and isinstance(name, str):
            await leadership.published(name)  # auto-created: known to every broker before any client
    node = broker.node_id
    # The address of the listener this client came in on (each listener advertises its own).
    brokers = [R.MetadataResponseBroker(node_id=node, host=ctx.advertised_host, port=ctx.advertised_port, rack=None)]
    # Every broker of a cluster; any of them creates topics, the controller named is the lowest id
    # (one broker is its own controller: admin clients send CreateTopics here).
    listener = ctx.listener_name
    brokers = [R.MetadataResponseBroker(node_id=b.id, host=b.on(listener)[0], port=b.on(listener)[1], rack=None)
               for b in leadership.other_brokers()] + brokers
    controller = leadership.controller_id()
    response = R(
        version=version,
        throttle_time_ms=0,
        brokers=brokers,
        cluster_id=broker.cluster_id,
        controller_id=controller,
        topics=[],
    )
    return _WithEncodedTopics(response, topics)  # type: ignore[return-value]


class _WithEncodedTopics:
    """A Metadata response whose topics are already encoded: the server's encoder (server._encode:
    with_header, then encode) gets the response encoded with no topics and these spliced in as its
    topics array. With 50,000 partitions this is what keeps Metadata fast: each topic's bytes come
    from its cache, no response objects are built for them."""

    __slots__ = ("response", "topics")

    def __init__(self, response: MetadataResponse, topics: list[bytes]) -> None:
        self.response = response
        self.topics = topics

    @property
    def throttle_time_ms(self) -> int:
        return int(self.response.throttle_time_ms)

    @throttle_time_ms.setter
    def throttle_time_ms(self, value: int) -> None:
        self.response.throttle_time_ms = value

    def with_header(self, **kwargs: Any) -> None:
        self.response.with_header(**kwargs)

    def encode(self, header: bool = True, framed: bool = True) -> bytearray:
        version = self.response.version
        flexible = version >= 9
        head = self.response.encode(header=header, framed=framed)
        empty = UnsignedVarInt32.encode(1) if flexible else _INT32.pack(0)
        # After the topics array: authorized_operations (int32, v8-10), then the tagged fields (v9+,
        # none here: one byte).
        after = (4 if 8 <= version <= 10 else 0) + (1 if flexible else 0)
        at = len(head) - after - len(empty)
        if bytes(head[at:at + len(empty)]) != empty:
            raise RuntimeError(f"Metadata v{version}: the encoded response is not laid out as expected")
        count = UnsignedVarInt32.encode(len(self.topics) + 1) if flexible else _INT32.pack(len(self.topics))
        out = bytearray(head[:at])
        out += count
        out += b"".join(self.topics)
        out += head[at + len(empty):]
        if framed:
            _INT32.pack_into(out, 0, len(out) - 4)
        return out


def _encode_topic(topic: MetadataResponse.MetadataResponseTopic, version: int) -> bytes:
    """One topic as it appears in the topics array of a Metadata response of this version."""
    flexible = version >= 9
    encoded = _TOPICS.encode([topic], version=version, compact=flexible, tagged=flexible)
    return bytes(encoded[len(UnsignedVarInt32.encode(2)) if flexible else 4:])


def _describe_topic(ctx: RequestContext, name: str | uuid.UUID, auto_create: bool,
                    elsewhere: bool = False) -> bytes:
    """The topic encoded for this request's version; a topic that exists comes from its cache."""
    R = MetadataResponse
    broker = ctx.services
    logs = broker.logs
    version = ctx.api_version
    if isinstance(name, uuid.UUID):
        return _encode_topic(R.MetadataResponseTopic(error_code=int(ErrorCode.UNKNOWN_TOPIC_ID), name=None,
                                                     topic_id=name, partitions=[]), version)
    if not ctx.authorize(OP_DESCRIBE, RES_TOPIC, name):
        return _encode_topic(R.MetadataResponseTopic(error_code=int(ErrorCode.TOPIC_AUTHORIZATION_FAILED),
                                                     name=name, topic_id=_ZERO_UUID, partitions=[]), version)
    topic = logs.topics.get(name)
    if topic is None and elsewhere:
        return _encode_topic(R.MetadataResponseTopic(error_code=int(ErrorCode.LEADER_NOT_AVAILABLE), name=name,
                                                     topic_id=_ZERO_UUID, partitions=[]), version)
    if topic is None:
        try:
            validate_topic_name(name)
        except KafkaProtocolError as exc:
            return _encode_topic(R.MetadataResponseTopic(error_code=int(exc.code), name=name, topic_id=_ZERO_UUID,
                                                         partitions=[]), version)
        # Internal names are never auto-created by a client: the broker creates its topics on first use.
        if auto_create and broker.config["auto.create.topics.enable"] and not is_internal_name(name) and (
                ctx.authorize(OP_CREATE, RES_CLUSTER, CLUSTER_NAME) or ctx.authorize(OP_CREATE, RES_TOPIC, name)):
            topic = logs.create_topic(name, broker.config["num.partitions"], {})
        else:
            return _encode_topic(R.MetadataResponseTopic(error_code=int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
                                                         name=name, topic_id=_ZERO_UUID, partitions=[]), version)
    count = len(topic.partitions)
    leaders = broker.leadership.partition_leaders(topic.name, str(topic.topic_id), count)
    cached = topic.metadata_cache.get(version)
    # Valid while made from the same partition count, internal flag and leaders (a single broker hands
    # out the same leader object every time, so this comparison is by identity, element by element).
    if cached is not None and cached[0] == count and cached[1] == topic.internal and cached[2] == leaders:
        return cached[3]
    if leaders is None:
        return _encode_topic(R.MetadataResponseTopic(error_code=int(ErrorCode.LEADER_NOT_AVAILABLE), name=topic.name,
                                                     topic_id=topic.topic_id, is_internal=topic.internal,
                                                     partitions=[]), version)
    P = R.MetadataResponseTopic.MetadataResponsePartition
    partitions = [
        P(error_code=0 if a.live else int(ErrorCode.LEADER_NOT_AVAILABLE), partition_index=p,
          leader_id=a.leader if a.live else -1, leader_epoch=a.epoch, replica_nodes=[a.leader],
          isr_nodes=[a.leader], offline_replicas=[] if a.live else [a.leader])
        for p, a in enumerate(leaders)
    ]
    encoded = _encode_topic(R.MetadataResponseTopic(error_code=0, name=topic.name, topic_id=topic.topic_id,
                                                    is_internal=topic.internal, partitions=partitions), version)
    topic.metadata_cache[version] = (count, topic.internal, leaders, encoded)
    return encoded


@api(DescribeClusterRequest, DescribeClusterResponse, 0, 1)
async def handle_describe_cluster(ctx: RequestContext, request: DescribeClusterRequest) -> DescribeClusterResponse:
    broker = ctx.services
    R = DescribeClusterResponse
    if ctx.api_version >= 1 and request.endpoint_type != 1:
        return R(version=ctx.api_version, error_code=int(ErrorCode.INVALID_REQUEST),
                 error_message="only broker endpoints (type 1) are served", cluster_id=broker.cluster_id,
                 controller_id=broker.node_id, brokers=[], endpoint_type=request.endpoint_type)
    brokers = [R.DescribeClusterBroker(broker_id=broker.node_id, host=ctx.advertised_host,
                                       port=ctx.advertised_port, rack=None)]
    name = ctx.listener_name
    brokers += [R.DescribeClusterBroker(broker_id=b.id, host=b.on(name)[0], port=b.on(name)[1], rack=None)
                for b in broker.leadership.other_brokers()]
    controller = broker.leadership.controller_id()
    return R(
        version=ctx.api_version,
        throttle_time_ms=0,
        error_code=0,
        error_message=None,
        endpoint_type=1,
        cluster_id=broker.cluster_id,
        controller_id=controller,
        brokers=brokers,
    )
