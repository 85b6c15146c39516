"""What the data plane and the control plane both read and write, defined once.

- `principals`: the principal of an unauthenticated client.
- `scram`: SCRAM credential derivation, as the broker checks it and the operator writes it
  into the brokers' credentials file (`users.json`).
- `usage`: the usage-record format the broker's metering writes and the cost report reads,
  and where its files live in the bucket.
- `layout`: every key of the bucket (topics, partitions, segment objects, leases, the producer
  id counter, security documents, the commit log, usage), and parsing them back.
- `manifest`: the bucket's JSON documents of a topic: `topic.json` (TopicMeta) and a partition's
  `manifest.json` (RemoteManifest, RemoteSegment).
- `placement`: cluster mode's placement document (who leads what at which epoch), written by
  the controller, followed by every broker.
- `lease`: a broker's lease object (MemberLease), renewed by the broker, judged by the controller.
- `s3`: the one S3 client set-up (S3Settings -> an aiobotocore or a botocore client); botocore is
  imported only when a client is built, and boto3 never.

The broker (`strata_broker`), the operator and the `strata` tools import these; this package
imports neither of them. Only the base dependencies are needed (the broker image installs no more).
"""
