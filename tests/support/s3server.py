"""moto's S3 server as a subprocess, buckets in it, and a listing helper for assertions."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
from brokerproc import free_port

# Broker settings that make tiering quick in a test: 1 MiB segments, uploads every second.
TIERED = {"segment.bytes": str(1 << 20), "tiered.upload.interval.ms": "1000", "log.retention.check.interval.ms": "500"}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        log = open(self.log_path, "ab")
        # moto's server, with conditional PUTs made atomic as S3's are (tests/support/moto_atomic.py).
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("moto_atomic.py")),
                                      "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("moto server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self) -> S3Bucket:
        name = f"strata-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return S3Bucket(self, name)


@dataclass
class S3Bucket:
    server: S3Server
    name: str

    def broker_settings(self, endpoint: str | None = None, **extra: str) -> dict[str, str]:
        return {"tiered.s3.bucket": self.name, "tiered.s3.endpoint": endpoint or self.server.endpoint,
                "tiered.s3.region": "us-east-1", **extra}

    def objects(self, prefix: str = "") -> dict[str, int]:
        client = self.server.client()
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def read(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.name, Key=key)["Body"].read()
