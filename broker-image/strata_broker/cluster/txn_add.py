"""AddPartitionsToTxn v5 between brokers: a partition leader (or a group coordinator) asks the
transaction coordinator of a transactional id on another broker to add partitions to the producer's
transaction, or to verify they are in it (KIP-890).

Transaction version 2 (groups/txn_v2.py): a transactional Produce v12+ for a partition not yet in
the transaction, and a TxnOffsetCommit v5 for a group whose offsets partition is not, make the
broker that receives them add the partition at the coordinator (verifyOnly=false). Older versions
(transaction version 1, where the client sent AddPartitionsToTxn / AddOffsetsToTxn itself) are
verified (verifyOnly=true): a batch of a transaction that ended, or of a partition never added, is
refused instead of opening a transaction no coordinator knows ("hanging").

The coordinator is the broker leading partition hash(transactional id) of `__transaction_state`
(the placement says which); the request goes through the inter-broker client of
cluster/txn_markers.py (the same connection, client id and authentication as WriteTxnMarkers).
Errors that only mean "the coordinator is elsewhere, or not reachable now" come back as
COORDINATOR_NOT_AVAILABLE; the caller maps them to the retriable error of its own API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from kafka.protocol.producer.transaction import AddPartitionsToTxnRequest, AddPartitionsToTxnResponse

from ..errors import ErrorCode, KafkaProtocolError
from ..groups.offsets import partition_for
from ..groups.txn_log import TRANSACTION_TOPIC

if TYPE_CHECKING:
    from ..log.manager import LogManager
    from .member import ClusterMember
    from .txn_markers import InterBrokerClient

log = logging.getLogger(__name__)

E = ErrorCode
_VERSION = 5
# Answers that mean "ask again later, maybe elsewhere" (the caller's client retries).
_UNREACHABLE = {E.NOT_COORDINATOR, E.COORDINATOR_NOT_AVAILABLE, E.COORDINATOR_LOAD_IN_PROGRESS,
                E.CLUSTER_AUTHORIZATION_FAILED, E.REQUEST_TIMED_OUT}


class RemoteTxnAdd:
    """Adds (or verifies) partitions of a transaction at its coordinator on another broker."""

    def __init__(self, member: ClusterMember, logs: LogManager, client: InterBrokerClient) -> None:
        self.member = member
        self.logs = logs
        self.client = client

    def coordinator_of(self, transactional_id: str) -> int | None:
        """The node id of the broker leading the id's `__transaction_state` partition (None if unknown)."""
        topic = self.logs.topics.get(TRANSACTION_TOPIC)
        if topic is None:
            return None
        assignment = self.member.follower.assignment(TRANSACTION_TOPIC,
                                                     partition_for(transactional_id, len(topic.partitions)))
        return None if assignment is None else assignment.leader

    async def add(self, transactional_id: str, producer_id: int, producer_epoch: int,
                  partitions: list[tuple[str, int]], verify_only: bool) -> dict[tuple[str, int], ErrorCode]:
        """One error per partition: NONE once the coordinator has it in the transaction."""
        leader = self.coordinator_of(transactional_id)
        peer = None if leader is None else self.member.placement.broker(leader)
        if peer is None or leader == self.member.node_id:
            # Not placed yet, or placed here while this broker has not loaded it: the client retries.
            return {tp: E.COORDINATOR_NOT_AVAILABLE for tp in partitions}
        by_topic: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_topic.setdefault(topic, []).append(partition)
        R = AddPartitionsToTxnRequest
        T = R.AddPartitionsToTxnTransaction
        request = R(transactions=[T(transactional_id=transactional_id, producer_id=producer_id,
                                    producer_epoch=producer_epoch, verify_only=verify_only,
                                    topics=[T.AddPartitionsToTxnTopic(name=t, partitions=ps)
                                            for t, ps in by_topic.items()])])
        try:
            response = await self.client.call(peer, request, _VERSION, AddPartitionsToTxnResponse)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, KafkaProtocolError) as exc:
            log.info("AddPartitionsToTxn to broker %d for %s failed: %r", leader, transactional_id, exc)
            return {tp: E.COORDINATOR_NOT_AVAILABLE for tp in partitions}
        out = {tp: ErrorCode(response.error_code) if response.error_code else E.COORDINATOR_NOT_AVAILABLE
               for tp in partitions}
        for txn in response.results_by_transaction:
            for topic in txn.topic_results:
                for p in topic.results_by_partition:
                    out[(topic.name, p.partition_index)] = ErrorCode(p.partition_error_code)
        for tp, code in out.items():
            if code in _UNREACHABLE:
                if code == E.CLUSTER_AUTHORIZATION_FAILED:
                    log.error("broker %d refused our AddPartitionsToTxn (another cluster secret?)", leader)
                out[tp] = E.COORDINATOR_NOT_AVAILABLE
        return out
