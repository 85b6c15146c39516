"""strata_contract's bucket formats and S3 client set-up: what the broker writes, the operator and
the `strata` tools read back (segment names, topic.json), and clients built by strata_contract.s3
against a real S3 endpoint (moto's server)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from memstore import MemStore
from s3server import S3Bucket
from strata_broker.config import BrokerConfig
from strata_broker.log.manager import LogManager
from strata_broker.log.segment import Segment
from strata_broker.tier.topics import BucketTopics
from strata_broker.tier.uploader import segment_files
from strata_contract.layout import (
    OPTIONAL_SEGMENT_SUFFIXES,
    SEGMENT_SUFFIXES,
    parse_segment_name,
    parse_topic_dir,
    segment_key,
    topic_meta_key,
    topic_root,
)
from strata_contract.manifest import RemoteManifest, TopicMeta
from strata_contract.s3 import S3Settings, async_client, error_code, is_not_found, sync_client

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def test_segment_names_parse_back() -> None:
    for generation in (0, 3):
        for suffix in SEGMENT_SUFFIXES:
            key = segment_key("p/clusters/c/topics/t-x/0/", 100, 199, suffix, generation)
            assert parse_segment_name(key.rsplit("/", 1)[-1]) == (100, 199, generation, suffix)
    for junk in ("manifest.json", "topic.json", "00000000000000000100-00000000000000000199.tmp",
                 "100-199.log", "00000000000000000100.log"):
        assert parse_segment_name(junk) is None


def test_every_uploaded_file_is_a_segment_object(tmp_path: Path) -> None:
    """The uploader's per-segment files are exactly the suffixes retention deletes and scrub keeps."""
    segment = Segment(str(tmp_path), 0, 4096)
    try:
        files = segment_files(segment)
        assert set(files) == set(SEGMENT_SUFFIXES) - set(OPTIONAL_SEGMENT_SUFFIXES)
        assert list(files)[-1] == "log"  # the log goes last
        assert all(Path(path).exists() for path in files.values())
    finally:
        segment.close()


def test_topic_meta_the_broker_writes_is_what_readers_parse(tmp_path: Path) -> None:
    config = BrokerConfig.from_overrides({"tiered.s3.bucket": "mem", "cluster.id": "c1"})
    logs = LogManager(str(tmp_path / "data"), config, RemoteManifest.from_json)
    logs.open()
    try:
        topic = logs.create_topic("orders-eu", 3, {"retention.ms": "1000"})
        assert topic is not None
        store = MemStore()
        asyncio.run(BucketTopics(store, "pre", "c1").put_meta(topic))  # type: ignore[arg-type]
        key = topic_meta_key("pre", "c1", topic.name, topic.topic_id)
        meta = TopicMeta.from_json(store.objects[key].body)
        assert meta == TopicMeta("orders-eu", str(topic.topic_id), 3, {"retention.ms": "1000"}, False)
        directory = topic_root("pre", "c1", topic.name, topic.topic_id).rstrip("/").rsplit("/", 1)[-1]
        assert parse_topic_dir(directory) == ("orders-eu", topic.topic_id)

        asyncio.run(BucketTopics(store, "pre", "c1").delete(topic))  # type: ignore[arg-type]
        assert not [k for k in store.objects if k.startswith(topic_root("pre", "c1", topic.name, topic.topic_id))]
    finally:
        logs.close()


def test_topic_meta_refuses_what_is_not_one() -> None:
    for bad in (b"not json", b"{}", b'{"id": "x"}', b'{"id": "x", "partitions": "many"}'):
        with pytest.raises((ValueError, KeyError, TypeError)):
            TopicMeta.from_json(bad)


def test_sync_and_async_clients_reach_the_same_bucket(s3: S3Bucket) -> None:
    settings = S3Settings(s3.server.endpoint, "us-east-1", CREDS)
    client = sync_client(settings)
    client.put_object(Bucket=s3.name, Key="a/one", Body=b"1")

    async def read_back() -> tuple[bytes, str]:
        async with async_client(settings) as aclient:
            response = await aclient.get_object(Bucket=s3.name, Key="a/one")
            async with response["Body"] as stream:
                body = await stream.read()
            try:
                await aclient.get_object(Bucket=s3.name, Key="a/missing")
            except Exception as exc:  # botocore's ClientError
                assert is_not_found(exc)
                return body, error_code(exc)
            raise AssertionError("a missing key was found")

    body, code = asyncio.run(read_back())
    assert body == b"1" and code == "NoSuchKey"
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=s3.name, Key="a/missing")


def test_unsigned_when_no_credentials_anywhere(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """`strata tier` against a laptop's endpoint with no AWS credentials at all: requests go unsigned."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3.server.client().put_object(Bucket=s3.name, Key="k", Body=b"v")
    client = sync_client(S3Settings(s3.server.endpoint, unsigned_if_anonymous=True))
    assert client.meta.region_name == "us-east-1"
    assert [o["Key"] for o in client.list_objects_v2(Bucket=s3.name)["Contents"]] == ["k"]  # moto lists for anyone


def test_unknown_credential_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="aws_secret"):
        sync_client(S3Settings("http://127.0.0.1:1", credentials={"aws_secret": "x"}))


def test_manifest_round_trip_keeps_every_field() -> None:
    manifest = RemoteManifest("t", str(uuid.uuid4()), 2, log_start_offset=5, version=7, cleaned_offset=3,
                              garbage=[["k", 1]], leader_epoch=4, leader_id=1, sealed=True)
    assert RemoteManifest.from_json(manifest.to_json()) == manifest
