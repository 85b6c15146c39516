"""The inter-broker secret of cluster mode (strata_broker/cluster/txn_markers.py InterBrokerAuth):
created once in the bucket, shared by every broker, and the client ids and SASL/PLAIN password
derived from it accepted only with that secret."""

from __future__ import annotations

import asyncio

from memstore import MemStore
from strata_broker.cluster.txn_markers import BROKER_USER, InterBrokerAuth


def test_brokers_share_one_secret_and_only_its_macs_pass() -> None:
    async def run() -> tuple[InterBrokerAuth, InterBrokerAuth, InterBrokerAuth]:
        store = MemStore()
        first, second = await asyncio.gather(InterBrokerAuth.load(store, "p/", "c1"),  # type: ignore[arg-type]
                                             InterBrokerAuth.load(store, "p/", "c1"))  # type: ignore[arg-type]
        other_cluster = await InterBrokerAuth.load(store, "p/", "c2")  # type: ignore[arg-type]
        return first, second, other_cluster

    first, second, other = asyncio.run(run())
    assert first.secret == second.secret and len(first.secret) == 32
    assert other.secret != first.secret
    client_id = first.client_id(2)
    assert client_id.startswith("strata-broker-2.")
    assert second.is_broker(client_id)
    assert not other.is_broker(client_id)
    assert not second.is_broker("strata-broker-2.0000")
    assert not second.is_broker(client_id.replace("-2.", "-3."))  # the MAC covers the broker id
    assert not second.is_broker("rdkafka") and not second.is_broker(None)
    assert not InterBrokerAuth().is_broker(InterBrokerAuth().client_id(0))  # no secret: nobody
    assert second.check_plain(BROKER_USER, first.password())
    assert not second.check_plain(BROKER_USER, first.secret.hex())
    assert not second.check_plain("admin", first.password())
    assert not other.check_plain(BROKER_USER, first.password())
    assert second.users() == {BROKER_USER: first.password()} and InterBrokerAuth().users() == {}
