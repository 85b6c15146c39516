"""The broker process: its logs, its listener, and its background housekeeping."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from .config import BrokerConfig
from .groups import GroupCoordinator
from .log.cleaner import Cleaner
from .log.manager import LogManager
from .metrics import serve_metrics
from .server import serve_connection
from .tier.manager import TierManager

log = logging.getLogger(__name__)


class Broker:
    def __init__(self, config: BrokerConfig, data_dir: str, listen: tuple[str, int],
                 advertise: tuple[str, int] | None = None, node_id: int = 0) -> None:
        self.config = config
        self.node_id = node_id
        self.listen_host, self.listen_port = listen
        self._advertise = advertise
        self.logs = LogManager(data_dir, config)
        self.tier: TierManager | None = TierManager(config, data_dir, node_id) if config["tiered.s3.bucket"] else None
        self.groups: GroupCoordinator | None = None
        self.cleaner = Cleaner(config["log.cleaner.io.max.bytes.per.second"])
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._shutdown_waiters: set[asyncio.Future[None]] = set()
        self._stopped = asyncio.Event()

    @property
    def cluster_id(self) -> str:
        return self.config["cluster.id"]

    @property
    def advertised_host(self) -> str:
        if self._advertise:
            return self._advertise[0]
        if self.listen_host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.listen_host

    @property
    def advertised_port(self) -> int:
        return self._advertise[1] if self._advertise else self.listen_port

    async def start(self) -> None:
        if self.tier is not None:
            await self.tier.open()
            os.makedirs(os.path.join(self.logs.meta_dir, "topics"), exist_ok=True)
            await self.tier.restore(self.logs.data_dir, self.logs.meta_dir)
        self.logs.open()
        if self.tier is not None:
            self.tier.attach(self.logs)
            self.logs.listener = self.tier
            await self.tier.replay_commit_log()
        self.groups = GroupCoordinator(self)
        await self.groups.start()
        self._server = await asyncio.start_server(self._on_connection, self.listen_host, self.listen_port,
                                                  reuse_address=True, limit=1 << 20)
        if self.listen_port == 0:
            self.listen_port = self._server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._every(self.groups.tick_ms, self.groups.tick)))
        self._tasks.append(loop.create_task(self._every(self.config["log.retention.check.interval.ms"],
                                                        self._retention)))
        if self.tier is not None:
            tick_ms = max(100, min(1000, self.config["tiered.upload.interval.ms"] // 4))
            self._tasks.append(loop.create_task(self._every(tick_ms, self.tier.tick)))
        if self.config["log.cleaner.enable"]:
            self._tasks.append(loop.create_task(self._every(self.config["log.cleaner.backoff.ms"], self._compact)))
        if self.config["log.flush.interval.ms"] > 0:
            self._tasks.append(loop.create_task(self._every(self.config["log.flush.interval.ms"],
                                                            self.logs.flush_dirty)))
        if self.config["metrics.listen"]:
            host, _, port = self.config["metrics.listen"].rpartition(":")
            bound = serve_metrics(self, host or "127.0.0.1", int(port))
            log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", bound)
        log.info("strata-broker %d listening on %s:%d, advertised as %s:%d", self.node_id, self.listen_host,
                 self.listen_port, self.advertised_host, self.advertised_port)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await serve_connection(self, reader, writer)
        finally:
            self._connections.discard(task)

    async def _compact(self) -> None:
        for topic in list(self.logs.topics.values()):
            if not topic.config.compacted:
                continue
            for plog in topic.partitions:
                if self.closing:
                    return
                if plog.remote is None:
                    await self.cleaner.maybe_clean(plog)
                elif self.tier is not None:
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

    def add_shutdown_waiter(self, future: asyncio.Future[None]) -> None:
        self._shutdown_waiters.add(future)

    def remove_shutdown_waiter(self, future: asyncio.Future[None]) -> None:
        self._shutdown_waiters.discard(future)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Clean shutdown: stop accepting, let in-flight requests finish, fsync and close the logs."""
        if self.closing:
            return
        self.closing = True
        log.info("shutting down")
        if self._server is not None:
            self._server.close()
        for future in list(self._shutdown_waiters):
            if not future.done():
                future.set_result(None)
        for task in self._tasks:
            task.cancel()
        if self.groups is not None:
            self.groups.stop()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        self.logs.close()
        if self.tier is not None:
            await self.tier.close()
        self._stopped.set()
        log.info("stopped cleanly")
