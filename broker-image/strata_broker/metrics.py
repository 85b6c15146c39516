"""Prometheus metrics, computed from the broker's state at scrape time.

The endpoint (`metrics.listen`, loopback unless a host is named) can ask for a bearer token
(`metrics.bearer.token.file`: `Authorization: Bearer <token>`, else 401) and serve HTTPS
(`metrics.ssl.certfile` + `metrics.ssl.keyfile`). It lists topic names and principals, so anything
beyond loopback should use one of them or a NetworkPolicy (the chart admits only the monitoring namespace).
"""

from __future__ import annotations

import hmac
import os
import resource
import shutil
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .log.cleaner import Cleaner
    from .log.manager import LogManager
    from .metering import Meter
    from .request_metrics import RequestMetrics
    from .tier.manager import TierManager


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class BrokerCollector(Collector):
    def __init__(self, logs: LogManager, meter: Meter, cleaner: Cleaner, tier: TierManager | None,
                 connections: Callable[[], int], requests: RequestMetrics | None = None) -> None:
        self.logs = logs
        self.requests = requests
        self.meter = meter
        self.cleaner = cleaner
        self.tier = tier
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        logs = self.logs
        yield GaugeMetricFamily("strata_connections_open", "Client connections holding a connection slot",
                                value=self.connections())
        if self.requests is not None:
            yield from self.requests.families()
        local = GaugeMetricFamily("strata_log_local_bytes", "Bytes of a partition's log on local disk",
                                  labels=["topic", "partition"])
        end = GaugeMetricFamily("strata_log_end_offset", "Log end offset", labels=["topic", "partition"])
        for topic in list(logs.topics.values()):
            for plog in topic.partitions:
                if not plog.loaded:
                    continue  # loaded by the event loop (start-up's background loader), never from here
                labels = [topic.name, str(plog.partition)]
                local.add_metric(labels, plog.size_bytes)
                end.add_metric(labels, plog.log_end_offset)
        yield local
        yield end
        commit = logs.group_commit
        rounds = CounterMetricFamily("strata_group_commit_rounds", "fsync rounds of the group commit, by the "
                                     "thread that ran the fdatasync (the event loop's own, or the fsync thread)",
                                     labels=["thread"])
        rounds.add_metric(["loop"], commit.inline_rounds)
        rounds.add_metric(["fsync"], commit.rounds - commit.inline_rounds)
        yield rounds
        yield GaugeMetricFamily("strata_group_commit_fsync_seconds", "Moving average of a round's fsync time",
                                value=commit.sync_seconds)
        yield GaugeMetricFamily("strata_open_file_descriptors", "File descriptors this process holds",
                                value=_open_descriptors())
        yield GaugeMetricFamily("strata_open_file_descriptors_limit", "The process's open-files limit (soft)",
                                value=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        yield GaugeMetricFamily("strata_log_segments_open", "Segments whose log file is open (one descriptor each)",
                                value=len(logs.handles))
        yield CounterMetricFamily("strata_log_segment_evictions", "Segments that gave their descriptors back",
                                  value=logs.handles.evictions)
        usage = shutil.disk_usage(logs.data_dir)
        yield GaugeMetricFamily("strata_data_dir_free_bytes", "Free bytes on the data dir's filesystem",
                                value=usage.free)
        yield GaugeMetricFamily("strata_data_dir_total_bytes", "Size of the data dir's filesystem", value=usage.total)
        labels = ["principal", "client_id", "topic"]
        families = {name: CounterMetricFamily(f"strata_client_{name}", f"Per principal, client and topic: {name}",
                                              labels=labels)
                    for name in ("produced_bytes", "produced_records", "fetched_bytes", "fetched_records")}
        for (principal, client_id, topic), counters in list(self.meter.totals.items()):
            for name, family in families.items():
                family.add_metric([principal, client_id, topic or ""], getattr(counters, name))
        yield from families.values()
        for where, stats in (("local", self.cleaner.stats),
                             ("s3", self.tier.compactor.stats if self.tier else None)):
            if stats is None:
                continue
            yield CounterMetricFamily(f"strata_compaction_{where}_bytes_read", "Bytes read by compaction",
                                      value=stats.bytes_read)
            yield CounterMetricFamily(f"strata_compaction_{where}_bytes_written", "Bytes written by compaction",
                                      value=stats.bytes_written)
            yield CounterMetricFamily(f"strata_compaction_{where}_seconds", "Time spent compacting",
                                      value=stats.seconds)
            yield CounterMetricFamily(f"strata_compaction_{where}_passes", "Compaction passes", value=stats.passes)
        tier = self.tier
        if tier is None:
            return
        lag = GaugeMetricFamily("strata_tier_upload_lag_offsets", "Offsets on local disk not yet in S3",
                                labels=["topic", "partition"])
        remote = GaugeMetricFamily("strata_log_remote_bytes", "Bytes of a partition's log in S3",
                                   labels=["topic", "partition"])
        for topic in list(logs.topics.values()):
            for plog in topic.partitions:
                if plog.loaded and plog.remote is not None:
                    labels = [topic.name, str(plog.partition)]
                    lag.add_metric(labels, plog.log_end_offset - plog.remote_end_offset)
                    remote.add_metric(labels, plog.remote.size_bytes)
        yield lag
        yield remote
        yield CounterMetricFamily("strata_tier_uploaded_segments", "Segments uploaded to S3",
                                  value=tier.uploaded_segments)
        yield CounterMetricFamily("strata_tier_upload_failures", "Upload passes that failed",
                                  value=tier.upload_failures)
        requests = CounterMetricFamily("strata_s3_requests", "S3 requests sent", labels=["operation"])
        for op, count in sorted(tier.store.requests.items()):
            requests.add_metric([op], count)
        yield requests
        yield CounterMetricFamily("strata_s3_request_failures", "S3 requests that failed",
                                  value=tier.store.failures)
        yield GaugeMetricFamily("strata_s3_healthy", "1 when the last S3 request succeeded",
                                value=1 if tier.store.healthy else 0)
        yield GaugeMetricFamily("strata_tier_cache_bytes", "Remote chunk cache on disk", value=tier.cache.size_bytes)
        downloader = tier.downloader
        if downloader is not None:
            yield GaugeMetricFamily("strata_tier_downloader_ready",
                                    "1 when the cold chunk downloader process takes requests",
                                    value=1 if downloader.ready else 0)
            chunks = CounterMetricFamily("strata_tier_cold_chunks", "Cold chunks downloaded, by where",
                                         labels=["by"])
            chunks.add_metric(["downloader"], downloader.downloads)
            chunks.add_metric(["broker"], downloader.fallbacks)
            yield chunks


def _bearer(app: Callable[..., Iterable[bytes]], token: str) -> Callable[..., Iterable[bytes]]:
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Bearer realm="strata"')])
            return [b"a bearer token is required\n"]
        return app(environ, start_response)

    return guarded


def serve_metrics(collector: BrokerCollector, host: str, port: int, token: str | None = None,
                  certfile: str | None = None, keyfile: str | None = None) -> int:
    """Serve /metrics on a daemon thread; the port bound."""
    registry = CollectorRegistry()
    registry.register(collector)
    app = make_wsgi_app(registry)
    if token:
        app = _bearer(app, token)
    httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    if certfile and keyfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd.server_port
