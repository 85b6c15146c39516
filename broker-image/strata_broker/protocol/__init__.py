"""Kafka API version table and request handlers (codecs come from kafka-python).

Importing this package registers every handler module in the table.
"""

from . import admin, configs, fetch, groups, metadata, offsets, produce, producer_ids, replicas, security  # noqa: F401
from .registry import API_TABLE, ApiSpec

__all__ = ["API_TABLE", "ApiSpec"]
