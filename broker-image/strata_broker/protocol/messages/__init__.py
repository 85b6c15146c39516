"""Codecs for the Kafka APIs kafka-python has no schema for: the KIP-848 consumer group protocol.

Each class is a kafka-python `ApiMessage` built from the JSON schema beside this file (the form of
Apache Kafka's common/message/*.json, which kafka-python's own codecs are generated from), so the
handlers use them exactly like kafka-python's classes.
"""

from __future__ import annotations

import sys

from kafka.protocol.api_message import ApiMessage

_HERE = sys.modules[__name__]


class ConsumerGroupHeartbeatRequest(ApiMessage, load_json=_HERE):
    pass


class ConsumerGroupHeartbeatResponse(ApiMessage, load_json=_HERE):
    pass


class ConsumerGroupDescribeRequest(ApiMessage, load_json=_HERE):
    pass


class ConsumerGroupDescribeResponse(ApiMessage, load_json=_HERE):
    pass


__all__ = [
    "ConsumerGroupDescribeRequest",
    "ConsumerGroupDescribeResponse",
    "ConsumerGroupHeartbeatRequest",
    "ConsumerGroupHeartbeatResponse",
]
