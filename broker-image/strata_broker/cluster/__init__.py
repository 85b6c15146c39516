"""Cluster mode: several brokers share one bucket; a placement (ConfigMap, or a local file in
development) says which broker leads which partition. See docs/cluster.md."""
