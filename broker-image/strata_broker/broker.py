"""The composition root: builds the broker's parts, hands each its dependencies, runs the
listeners and the background housekeeping. Nothing else imports this module but the CLI."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time

from strata_contract.manifest import RemoteManifest

from .cluster.member import ClusterMember
from .cluster.txn_add import RemoteTxnAdd
from .cluster.txn_markers import ClusterMarkers, InterBrokerAuth, InterBrokerClient, LocalMarkers
from .config import BrokerConfig
from .groups import GroupCoordinator
from .groups.transactions import TransactionCoordinator
from .groups.txn_cluster import ClusterTransactionCoordinator
from .log.cleaner import Cleaner
from .log.manager import LogManager
from .metering import Meter
from .metrics import BrokerCollector, serve_metrics
from .protocol.context import Connection, Lifecycle, Services
from .replica import Leadership, ReplicaManager, SingleBroker
from .request_pool import RequestMemoryPool
from .schemas import ensure_schemas_in_cluster, ensure_schemas_topic, load_schema_ids
from .security import ANONYMOUS
from .security.acl import Authorizer
from .security.credentials import CredentialStore
from .security.listeners import Listener, TlsReloader, build_listeners, principal_from_cert
from .security.quotas import QuotaManager
from .security.sasl import AuthGuard
from .server import FrameProtocol, serve_connection
from .tier.manager import TierManager

log = logging.getLogger(__name__)


class Broker:
    def __init__(self, config: BrokerConfig, data_dir: str, listen: tuple[str, int] | None = None,
                 advertise: tuple[str, int] | None = None, node_id: int = 0,
                 listeners: list[Listener] | None = None) -> None:
        self.config = config
        self.node_id = node_id
        _raise_fd_limit()  # before the logs size their file-handle cache from it
        if listeners is None:
            host, port = listen or ("127.0.0.1", 9092)
            adv = [f"{advertise[0]}:{advertise[1]}"] if advertise else []
            listeners = build_listeners(config, [f"{host}:{port}"], adv)
        self.listeners = listeners
        self.logs = LogManager(data_dir, config, RemoteManifest.from_json if config["tiered.s3.bucket"] else None)
        self.tier: TierManager | None = TierManager(config, data_dir, node_id) if config["tiered.s3.bucket"] else None
        self.authorizer = Authorizer(config["authorizer.enable"], config["super.users"],
                                     config["allow.everyone.if.no.acl.found"], self.logs.meta_dir)
        self.credentials = CredentialStore(config["sasl.credentials.file"], self.logs.meta_dir)
        self._tls_reloader: TlsReloader | None = None
        self.reserved_principals = frozenset(p.strip() for p in config["ssl.reserved.principals"].split(";")
                                             if p.strip())
        self.auth = AuthGuard(config["sasl.auth.threads"],
                              config["sasl.failed.authentication.backoff.max.ms"] / 1000.0)
        self.quotas = QuotaManager(self.logs.meta_dir, config["quota.window.size.seconds"],
                                   config["quota.window.num"])
        self.cluster: ClusterMember | None = None
        self.leadership: Leadership = SingleBroker(node_id)
        if config["cluster.placement.file"]:
            if self.tier is None:
                raise SystemExit("cluster mode (cluster.placement.file) needs tiered storage: set tiered.s3.bucket")
            self.cluster = ClusterMember(
                node_id, self.logs, self.tier, self.listeners,
                {"acls": self.authorizer, "scram-credentials": self.credentials, "quotas": self.quotas},
                config["cluster.placement.file"], config["cluster.lease.ms"])
            self.leadership = self.cluster
            self.tier.leads = self.cluster.leads
        self.replicas = ReplicaManager(self.logs, self.leadership, self.tier)
        self.groups = GroupCoordinator(config, self.logs, self.replicas)
        # One coordinator for every transactional id, or (cluster mode) for the ids whose
        # __transaction_state partition this broker leads, with markers sent to other leaders.
        self.transactions: TransactionCoordinator = (
            TransactionCoordinator(config, self.logs, self.replicas, self.groups.offsets.store)
            if self.cluster is None else
            ClusterTransactionCoordinator(config, self.logs, self.replicas, self.groups.offsets.store, self.cluster))
        self.txn_markers = LocalMarkers(self.logs, self.replicas, self.leadership, self.groups.offsets.store)
        self.inter_broker: InterBrokerClient | None = None
        self.cleaner = Cleaner(config["log.cleaner.io.max.bytes.per.second"])
        self.meter = Meter(config, node_id, data_dir, self.logs, lambda: self.connection_count, self.tier)
        if self.cluster is not None:  # a group's lag covers the partitions other brokers lead (their leases)
            cluster = self.cluster
            self.meter.group_lag = lambda: self.groups.lag(self.logs, cluster.end_offset)
            self.meter.before_cut = cluster.refresh_peer_end_offsets
        else:
            self.meter.group_lag = lambda: self.groups.lag(self.logs)
        if self.tier is not None:
            self.logs.producer_id_blocks = self.tier.reserve_producer_ids
            self.tier.store.on_request = self.meter.s3_call
            self.tier.store.on_downloaded = self.meter.s3_downloaded
        self.lifecycle = Lifecycle()
        self.services = Services(config=config, node_id=node_id, logs=self.logs, replicas=self.replicas,
                                 leadership=self.leadership, groups=self.groups, authorizer=self.authorizer,
                                 credentials=self.credentials, auth=self.auth, quotas=self.quotas, meter=self.meter,
                                 lifecycle=self.lifecycle, default_listener=listeners[0],
                                 transactions=self.transactions, txn_markers=self.txn_markers)
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._per_ip: dict[str, int] = {}
        capacity = config["queued.max.request.bytes"]
        self.request_pool = RequestMemoryPool(capacity if capacity > 0 else None)
        self._refused = 0
        self._refused_logged = 0.0
        self._stopped = asyncio.Event()

    async def _inter_broker_markers(self, cluster: ClusterMember) -> None:
        """Cluster mode: the shared secret brokers authenticate to each other with, and the marker
        writer that sends WriteTxnMarkers to the other leaders (cluster/txn_markers.py)."""
        assert self.tier is not None
        auth = await InterBrokerAuth.load(self.tier.store, self.tier.prefix, self.tier.cluster)
        self.services.inter_broker = auth
        self.credentials.builtin_users.update(auth.users())
        self.inter_broker = InterBrokerClient(self.node_id, auth, self.listeners,
                                               self.config["inter.broker.listener.name"], config=self.config)
        self.transactions.send_markers = ClusterMarkers(cluster, self.txn_markers, self.inter_broker).write
        self.transactions.remote_add = RemoteTxnAdd(cluster, self.logs, self.inter_broker).add

    @property
    def cluster_id(self) -> str:
        return self.config["cluster.id"]

    # The first listener stands for the broker where a single address is wanted (logs, tests).
    @property
    def listen_host(self) -> str:
        return self.listeners[0].host

    @property
    def listen_port(self) -> int:
        return self.listeners[0].port

    @property
    def advertised_host(self) -> str:
        return self.listeners[0].advertised_host

    @property
    def advertised_port(self) -> int:
        return self.listeners[0].advertised_port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        if self.tier is not None:
            await self.tier.open()
            os.makedirs(os.path.join(self.logs.meta_dir, "topics"), exist_ok=True)
            if self.cluster is None:
                await self.tier.restore(self.logs.data_dir, self.logs.meta_dir)
        self.logs.open()
        if self.tier is not None:
            self.tier.attach(self.logs)
            self.logs.listener = self.cluster or self.tier
            if self.cluster is None:
                await self.tier.replay_commit_log()
            try:
                await self.logs.reserve_producer_id_block()
            except Exception as exc:  # S3 went away after open(): the first InitProducerId asks again
                log.warning("no producer id block reserved at start-up (%r)", exc)
        if self.cluster is None:
            await self.groups.load_all()
        if self.transactions is not None:
            await self.transactions.load()
        if self.config["schema.registry.principal"] and self.cluster is None:
            ensure_schemas_topic(self.logs)  # the schema registry's store (strata_broker/schemas.py)
        if self.cluster is None:
            # Schema-checked topics know every registered id, S3 included, before the first produce.
            await load_schema_ids(self.logs, self.replicas)
        for listener in self.listeners:
            await self._listen(listener)
        if self.cluster is not None:
            await self._inter_broker_markers(self.cluster)
            # Partitions arrive through the placement: taken over from the bucket, one by one.
            txns = self.transactions
            await self.cluster.start(self.groups, txns if isinstance(txns, ClusterTransactionCoordinator) else None)
        loop = asyncio.get_running_loop()
        # Partitions not written since the last clean shutdown were opened lazily: load them now, stepwise.
        self._tasks.append(loop.create_task(self.logs.load_remaining()))
        if self.cluster is not None and self.config["schema.registry.principal"]:
            self._tasks.append(loop.create_task(ensure_schemas_in_cluster(self.logs, self.cluster)))
        if any(lst.ssl_context for lst in self.listeners):
            self._tls_reloader = TlsReloader(self.config, self.listeners)
            self._tasks.append(loop.create_task(self._every(self.config["ssl.certificate.reload.ms"],
                                                            self._reload_tls)))
        if self.config["sasl.credentials.file"]:
            self._tasks.append(loop.create_task(self._every(self.config["sasl.credentials.reload.ms"],
                                                            self._reload_credentials)))
        self._tasks.append(loop.create_task(self._every(self.groups.tick_ms, self.groups.tick)))
        if self.transactions is not None:
            self._tasks.append(loop.create_task(self._every(self.transactions.tick_ms, self.transactions.tick)))
        self._tasks.append(loop.create_task(self._every(self.config["log.retention.check.interval.ms"],
                                                        self._retention)))
        if self.transactions is not None:  # idle transactional ids removed (transactional.id.expiration.ms)
            from .groups.txn_expiry import TransactionalIdExpiry

            expiry = TransactionalIdExpiry(self.config, self.transactions)
            self._tasks.append(loop.create_task(self._every(expiry.interval_ms, expiry.run)))
        if self.tier is not None:
            tick_ms = max(100, min(1000, self.config["tiered.upload.interval.ms"] // 4))
            self._tasks.append(loop.create_task(self._every(tick_ms, self.tier.tick)))
        self._tasks.append(loop.create_task(self._every(self.config["metering.sample.interval.ms"],
                                                        self._sample_usage)))
        self._tasks.append(loop.create_task(self._every(self.config["metering.snapshot.interval.ms"],
                                                        self.meter.snapshot)))
        if self.config["log.cleaner.enable"]:
            self._tasks.append(loop.create_task(self._every(self.config["log.cleaner.backoff.ms"], self._compact)))
        if self.config["log.flush.interval.ms"] > 0:
            self._tasks.append(loop.create_task(self._every(self.config["log.flush.interval.ms"],
                                                            self.logs.flush_dirty)))
        if self.config["metrics.listen"]:
            host, _, port = self.config["metrics.listen"].rpartition(":")
            token = None
            if self.config["metrics.bearer.token.file"]:
                with open(self.config["metrics.bearer.token.file"]) as f:
                    token = f.read().strip()
            certfile, keyfile = self.config["metrics.ssl.certfile"], self.config["metrics.ssl.keyfile"]
            collector = BrokerCollector(self.logs, self.meter, self.cleaner, self.tier, lambda: self.connection_count,
                                        self.services.request_metrics)
            bound = serve_metrics(collector, host or "127.0.0.1", int(port), token, certfile, keyfile)
            log.info("metrics on %s://%s:%d/metrics%s", "https" if certfile and keyfile else "http",
                     host or "127.0.0.1", bound, " (bearer token required)" if token else "")
        for lst in self.listeners:
            log.info("strata-broker %d listening on %s://%s:%d, advertised as %s:%d", self.node_id, lst.name,
                     lst.host, lst.port, lst.advertised_host, lst.advertised_port)
        if self.authorizer.enabled:
            log.info("authorizer on: %d ACLs, super users %s", len(self.authorizer.acls),
                     ", ".join(sorted(self.authorizer.super_users)) or "(none)")

    async def _listen(self, listener: Listener) -> None:
        async def on_connection(proto: FrameProtocol) -> None:
            await self._on_connection(listener, proto)

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: FrameProtocol(on_connection, self.request_pool), listener.host, listener.port,
            reuse_address=True, backlog=1024,
            ssl=listener.ssl_context,
            ssl_handshake_timeout=self.config["ssl.handshake.timeout.ms"] / 1000.0 if listener.ssl_context else None)
        if listener.port == 0:
            listener.port = server.sockets[0].getsockname()[1]
        self._servers.append(server)

    async def _on_connection(self, listener: Listener, proto: FrameProtocol) -> None:
        peername = proto.get_extra_info("peername")
        ip = peername[0] if isinstance(peername, tuple) else str(peername)
        principal: str | None = None  # until SaslAuthenticate succeeds, on a SASL listener
        if not listener.sasl:
            principal = principal_from_cert(proto.get_extra_info("peercert")) if listener.tls else None
            if principal in self.reserved_principals:
                # e.g. the operator's own super user: no certificate the CA signs may stand for it
                log.warning("closing a connection from %s: its client certificate maps to the reserved "
                            "principal %s (ssl.reserved.principals)", ip, principal)
                proto.abort()
                return
            principal = principal or ANONYMOUS
        if (len(self._connections) >= self.config["max.connections"]
                or self._per_ip.get(ip, 0) >= self.config["max.connections.per.ip"]):
            self._refuse(ip, proto)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            await serve_connection(self.services, proto, Connection(listener, ip, principal))
        finally:
            self._connections.discard(task)
            left = self._per_ip.get(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)

    def _refuse(self, ip: str, proto: FrameProtocol) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged > 10:  # a flood must not flood the log too
            self._refused_logged = now
            log.warning("refusing connections over max.connections(.per.ip) (from %s; %d refused so far)", ip,
                        self._refused)
        proto.abort()

    async def _reload_tls(self) -> None:
        if self._tls_reloader is not None:
            self._tls_reloader.poll()

    async def _reload_credentials(self) -> None:
        self.credentials.poll()

    async def _sample_usage(self) -> None:
        self.meter.sample()

    async def _compact(self) -> None:
        for topic in list(self.logs.topics.values()):
            if not topic.config.compacted:
                continue
            for plog in topic.partitions:
                if self.closing:
                    return
                if not self.leadership.leads(topic.name, plog.partition):
                    continue
                await self.cleaner.maybe_clean(plog)
                if plog.remote is not None and self.tier is not None:
                    await self.tier.maybe_compact(topic, plog)

    async def _retention(self) -> None:
        self.logs.enforce_retention()

    async def _every(self, interval_ms: int, job) -> None:  # type: ignore[no-untyped-def]
        while True:
            await asyncio.sleep(interval_ms / 1000.0)
            try:
                await job()
            except Exception:  # a failed sweep must not stop the next one
                log.exception("background job %s failed", getattr(job, "__name__", job))

    @property
    def closing(self) -> bool:
        return self.lifecycle.closing

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Clean shutdown: stop accepting, let in-flight requests finish, fsync and close the logs."""
        if self.closing:
            return
        log.info("shutting down")
        for server in self._servers:
            server.close()
        self.lifecycle.close()
        for task in self._tasks:
            task.cancel()
        self.groups.stop()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        if self.cluster is not None:
            await self.cluster.stop()
        if self.inter_broker is not None:
            self.inter_broker.close()
        try:
            # The last window's usage is written before the broker goes (and uploaded if S3 answers).
            await asyncio.wait_for(self.meter.snapshot(), 10.0)
        except Exception as exc:
            log.warning("final usage snapshot incomplete: %s", exc)
        self.logs.close()
        self.auth.close()
        if self.tier is not None:
            await self.tier.close()
        self._stopped.set()
        log.info("stopped cleanly")


def _raise_fd_limit() -> None:
    """Up to the hard limit: every client connection is a descriptor (max.connections)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit: %s", exc)
