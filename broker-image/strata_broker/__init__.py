"""Strata broker: the data plane. Speaks the Kafka wire protocol over a segmented log."""

__version__ = "0.1.0"
