"""The partition log: segments, indexes, append, read, roll, retention, recovery."""
