"""The inter-broker secret of cluster mode (strata_broker/cluster/txn_markers.py InterBrokerAuth):
created once in the bucket, shared by every broker, and the client ids and SASL/PLAIN password
derived from it accepted only with that secret; the listener and TLS settings inter-broker
requests use."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import secutil
from memstore import MemStore
from strata_broker.cluster.txn_markers import BROKER_USER, ClientTls, InterBrokerAuth, inter_broker_listener
from strata_broker.config import BrokerConfig
from strata_broker.security.listeners import build_listeners


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


def test_inter_broker_listener_and_tls_follow_the_broker_configuration(tmp_path: Path) -> None:
    pki = secutil.make_pki(tmp_path / "pki", server_client_auth=True)
    config = BrokerConfig.from_overrides({
        **secutil.ssl_settings(pki, "none"), "ssl.client.auth.listener.map": "MTLS:required",
        "listener.security.protocol.map": "MTLS:SSL",
        "listeners": "SASL_SSL://127.0.0.1:0,MTLS://127.0.0.1:0"})
    listeners = build_listeners(config, [], [])
    # No plaintext listener: the first TLS one (one that does not require client certificates
    # first), unless another is named.
    assert inter_broker_listener(listeners).name == "SASL_SSL"  # type: ignore[union-attr]
    assert inter_broker_listener(listeners[::-1], "", config).name == "SASL_SSL"  # type: ignore[union-attr]
    assert inter_broker_listener(listeners[::-1]).name == "MTLS"  # type: ignore[union-attr]
    assert inter_broker_listener(listeners, "MTLS").name == "MTLS"  # type: ignore[union-attr]
    assert inter_broker_listener(listeners, "PLAINTEXT") is None
    plain = build_listeners(BrokerConfig.from_overrides({"listeners": "SSL://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
                                                         **secutil.ssl_settings(pki, "none")}), [], [])
    assert inter_broker_listener(plain).name == "PLAINTEXT"  # type: ignore[union-attr]
    # Trust is ssl.ca.location (only), with the host checked; the broker's certificate is presented
    # where the listener requires client certificates.
    sasl_ssl, mtls = (ClientTls(config, lst) for lst in listeners)
    assert sasl_ssl.certificate is None and mtls.certificate is not None
    context = mtls.context()
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "strata-test-ca"),),)]
    unchecked = BrokerConfig.from_overrides({**secutil.ssl_settings(pki, "none"),
                                             "ssl.endpoint.identification.algorithm": ""})
    context = ClientTls(unchecked, listeners[0]).context()
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
