"""Tiered storage: closed segments in S3, remote reads with a chunk cache, restore from the bucket."""
