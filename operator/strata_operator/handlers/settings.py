"""The operator's settings: environment variables, read once at start into one typed object.

  STRATA_OPERATOR_RECONCILE_INTERVAL  seconds between an EventBroker's resync passes (drift repair,
                                      resync.py), default 60; the first at a random point of the second
                                      half of the first interval, and the EventBroker's own timer
  STRATA_OPERATOR_RETRY_DELAY         seconds before retrying a failed reconcile (and before the next
                                      resync pass after one that left a resource failing), default 15
  STRATA_OPERATOR_FULL_RESYNC         seconds between a Microservice's full reconciles by the resync (its
                                      Secret read and its objects applied again), default 10 intervals,
                                      spread by 25% either way per Microservice
  STRATA_OPERATOR_DELETE_TIMEOUT      seconds a deletion keeps retrying an unreachable broker
                                      before it releases the finalizer anyway, default 600
  STRATA_OPERATOR_IMAGE_PULL_SECRETS  comma-separated pull secrets for every pod it creates, besides
                                      each resource's own spec.imagePullSecrets (the chart: imagePullSecrets)
  STRATA_OPERATOR_KAFKA_*             the operator's own Kafka credentials (admin.py)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    interval: float
    retry_delay: float
    full_resync: float
    delete_timeout: float
    image_pull_secrets: tuple[str, ...]

    @property
    def snapshot_age(self) -> float:
        """A resync pass compares with a snapshot of the broker at most this old (one read per broker,
        shared): drift is seen within one interval of happening."""
        return self.interval / 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        interval = float(env.get("STRATA_OPERATOR_RECONCILE_INTERVAL", "60"))
        return cls(
            interval=interval,
            retry_delay=float(env.get("STRATA_OPERATOR_RETRY_DELAY", "15")),
            full_resync=float(env.get("STRATA_OPERATOR_FULL_RESYNC", str(interval * 10))),
            delete_timeout=float(env.get("STRATA_OPERATOR_DELETE_TIMEOUT", "600")),
            image_pull_secrets=tuple(n.strip() for n in env.get("STRATA_OPERATOR_IMAGE_PULL_SECRETS", "").split(",")
                                     if n.strip()),
        )


SETTINGS = Settings.from_env()
