"""What the data plane and the control plane both read and write, defined once.

- `principals`: the principal of an unauthenticated client.
- `scram`: SCRAM credential derivation, as the broker checks it and the operator writes it
  into the brokers' credentials file (`users.json`).
- `usage`: the usage-record format the broker's metering writes and the cost report reads,
  and where its files live in the bucket.

The broker (`strata_broker`), the operator and the `strata` tools import these; this package
imports neither of them.
"""
