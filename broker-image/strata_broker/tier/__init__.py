"""Remote storage: a tiered partition's closed segments in S3, read back below the local log start.

The bucket's key layout and its JSON documents are strata_contract's (layout.py, manifest.py),
for the operator and the `strata` tools read them too; the index files are log/index.py's. Here:

- `manager.py`   TierManager: builds the parts below around one bucket; what the broker and the
                 replica layer talk to.
- `store.py`     ObjectStore: the bucket (retries until a deadline, conditional and multipart writes).
- `uploader.py`  closed segments -> objects (`segment_files`: which files go up per segment), then
                 the manifest.
- `publish.py`   the one way a manifest is rewritten (conditional on the version in cluster mode).
- `retention.py` time and size retention over the bucket, and DeleteRecords' new log start.
- `reader.py`    remote reads: ranged GETs in chunks, prefetch; `cache.py` the chunk cache and
                 `downloader.py` the child process that receives cold chunks.
- `wal.py`       the S3 commit log (strata.durability=s3: acks=all answered once in S3).
- `compactor.py` compaction of remote segments of compacted topics.
- `topics.py`    topic.json written for a tiered topic, a deleted topic's objects deleted.
- `restore.py`   an empty data dir seeded from the bucket's manifests.
- `producer_ids.py` cluster-wide producer id blocks from a counter in the bucket.

`tier/` imports `log/`; `log/` never imports `tier/`.
"""
