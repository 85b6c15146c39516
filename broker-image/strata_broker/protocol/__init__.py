"""Kafka API version table and request handlers (codecs come from kafka-python).

Importing this package registers every handler module in the table.
"""

from . import (  # noqa: F401
    admin,
    configs,
    fetch,
    groups,
    metadata,
    offsets,
    produce,
    producer_ids,
    producers,
    replicas,
    security,
    transactions,
    txn_markers,
)
from .registry import API_TABLE, ApiSpec

__all__ = ["API_TABLE", "ApiSpec"]
