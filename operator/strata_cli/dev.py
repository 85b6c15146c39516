"""`strata dev --brokers N`: a broker cluster on loopback, for development.

moto's S3 server (one bucket), N broker processes on ports PORT..PORT+N-1 (broker ids 0..N-1,
data in DIR/broker-<id>) sharing that bucket, and the cluster controller running in this process,
writing the placement to DIR/placement.json, which every broker reads (`cluster.placement.file`)
in place of the ConfigMap it watches on Kubernetes. The pieces (moto, broker processes, settings,
bucket mirror) are `strata local`'s, so `strata local` and `strata dev` behave alike: the bucket is
mirrored to DIR/s3/ and restored at the next start (except the brokers' leases, which a restart
renews), and DIR/placement.json is kept, so leader epochs keep rising across restarts.

The members are the brokers 0..N-1. `strata cluster show --placement DIR/placement.json` shows
the placement, `strata cluster rebalance --placement DIR/placement.json` rebalances it. Ctrl-C
stops the brokers, then the controller, then the S3 endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import click

from . import local as ls


def cluster_settings(placement_file: Path, lease_ms: int) -> dict[str, str]:
    return {"cluster.placement.file": str(placement_file), "cluster.lease.ms": str(lease_ms)}


def _clear_leases(endpoint: str, bucket: str) -> int:
    """Lease objects restored from the mirror belong to processes that are gone."""
    client = ls.s3_client(endpoint)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", []) if "/members/" in o["Key"]]
    for key in keys:
        client.delete_object(Bucket=bucket, Key=key)
    return len(keys)


@click.command("dev")
@click.option("--brokers", "count", default=3, show_default=True, type=click.IntRange(1, 64),
              help="Number of broker processes.")
@click.option("--data-dir", default="data-dev", show_default=True, type=click.Path(file_okay=False),
              help="Broker data under DIR/broker-<id>, the placement in DIR/placement.json, the bucket's mirror "
                   "under DIR/s3, logs in DIR/*.log.")
@click.option("--port", default=9092, show_default=True, type=click.IntRange(1, 65535),
              help="Kafka port of broker 0; broker i listens on PORT+i.")
@click.option("--s3-port", default=9000, show_default=True, type=click.IntRange(1, 65535), help="S3 endpoint port.")
@click.option("--bucket", default=ls.BUCKET, show_default=True, help="Bucket the brokers share.")
@click.option("--local-retention-bytes", default=2 << 20, show_default=True, type=click.IntRange(min=-2),
              help="Hot bytes kept on disk per partition; the rest lives in S3 only.")
@click.option("--lease-ms", default=3000, show_default=True, type=click.IntRange(min=100),
              help="Brokers' cluster.lease.ms (they renew every third of it).")
@click.option("--grace-ms", default=3000, show_default=True, type=click.IntRange(min=0),
              help="How long past its lease a broker may stay silent before its partitions move.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Extra broker property for every broker, as strata-broker --set (applied last). Repeatable.")
@click.option("--no-mirror", is_flag=True, help="Do not persist the bucket to DATA_DIR/s3 (it dies with the stack).")
def dev(count: int, data_dir: str, port: int, s3_port: int, bucket: str, local_retention_bytes: int,
        lease_ms: int, grace_ms: int, settings: tuple[str, ...], no_mirror: bool) -> None:
    """Run N brokers sharing an embedded S3 endpoint, with the cluster controller, on loopback."""
    from strata_operator.cluster.controller import BucketReader, Controller, FileSink

    extra = ls.parse_settings(settings)
    ports = {port + i: f"broker {i} (--port + {i})" for i in range(count)}
    if s3_port in ports:
        raise click.UsageError(f"--s3-port {s3_port} collides with the brokers' ports {port}..{port + count - 1}")
    if port + count - 1 > 65535:
        raise click.UsageError("--port + --brokers goes beyond 65535")
    ls.check_ports_free({**ports, s3_port: "--s3-port"})
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    placement_file = root / "placement.json"
    endpoint = f"http://127.0.0.1:{s3_port}"
    stop = threading.Event()
    moto: subprocess.Popen[bytes] | None = None
    brokers: list[subprocess.Popen[bytes]] = []
    mirror = None if no_mirror else ls.BucketMirror(endpoint, bucket, root / "s3" / bucket)
    threads: list[threading.Thread] = []
    controller_log = logging.getLogger("strata.cluster")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("strata dev: %(message)s"))
    controller_log.addHandler(handler)
    controller_log.setLevel(logging.INFO)

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    exit_code = 0
    reported: set[int] = set()
    controller_stop = threading.Event()
    try:
        moto = ls.start_s3(root, s3_port, bucket, stop)
        restored = mirror.restore() if mirror is not None else 0
        _clear_leases(endpoint, bucket)
        env = ls.broker_env()
        # The controller reads the bucket with the same (dummy) credentials as the brokers.
        reader = BucketReader(bucket, endpoint, ls.REGION, {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                                                            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]})
        controller = Controller(reader, FileSink(str(placement_file)), members=set(range(count)), grace_ms=grace_ms,
                                rebalance_file=f"{placement_file}.rebalance")
        threads.append(threading.Thread(target=lambda: asyncio.run(controller.run(controller_stop)),
                                        name="cluster-controller", daemon=True))
        threads[-1].start()
        base = {**ls.local_settings(bucket, endpoint, local_retention_bytes),
                **cluster_settings(placement_file.resolve(), lease_ms), **extra}
        for i in range(count):
            brokers.append(ls.start_broker(root / f"broker-{i}", port + i, base, ("--broker-id", str(i)), env))
        for i, proc in enumerate(brokers):
            ls.wait_listening(port + i, proc, 120, f"broker {i}", stop)
        if mirror is not None:
            threads.append(threading.Thread(target=mirror.run, args=(stop,), name="bucket-mirror", daemon=True))
            threads[-1].start()
        strata = ls._strata_command()
        bootstrap = ",".join(f"127.0.0.1:{port + i}" for i in range(count))
        click.echo(
            f"\nStrata dev cluster: {count} broker(s) (Ctrl-C stops it)\n"
            f"  Kafka bootstrap  {bootstrap}\n"
            f"  S3 endpoint      {endpoint}   bucket {bucket}"
            + (f" (mirrored to {mirror.directory}" + (f", {restored} object(s) restored)" if restored else ")")
               if mirror is not None else " (in memory only)") + "\n"
            f"  placement        {placement_file}   lease {lease_ms} ms + grace {grace_ms} ms\n\n"
            f"  placement      {strata} cluster show --placement {placement_file} --bucket {bucket} "
            f"--endpoint {endpoint}\n"
            f"  rebalance      {strata} cluster rebalance --placement {placement_file}\n")
        sys.stdout.flush()
        while not stop.is_set():
            if moto.poll() is not None:
                click.echo(f"strata dev: the S3 endpoint exited ({moto.returncode}); see {root / 'moto.log'}",
                           err=True)
                exit_code = 1
                break
            for i, proc in enumerate(brokers):
                if proc.poll() is not None and i not in reported:
                    # A broker that dies is the failover this mode exists to try: say so, keep going.
                    click.echo(f"strata dev: broker {i} exited ({proc.returncode}); its partitions move to the "
                               f"others after lease + grace", err=True)
                    reported.add(i)
            if len(reported) == len(brokers):
                click.echo("strata dev: every broker exited", err=True)
                exit_code = 1
                break
            stop.wait(0.5)
    finally:
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in brokers:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in brokers:
                ls.stop_process(proc, 60)
            controller_stop.set()
            for t in threads:
                t.join(30)
            if mirror is not None and moto is not None and moto.poll() is None:
                try:
                    mirror.sync()
                except Exception as exc:
                    click.echo(f"strata dev: last mirror pass failed: {exc}", err=True)
            ls.stop_process(moto, 15)
        finally:
            signal.signal(signal.SIGINT, previous[signal.SIGINT])
            controller_log.removeHandler(handler)
    if exit_code:
        sys.exit(exit_code)
    click.echo("strata dev: stopped", err=True)
