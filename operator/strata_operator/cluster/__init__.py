"""The control plane of broker clusters: which broker leads which partition.

assign       pure: (placement, members, live brokers, topics, bytes in) -> next placement + moves
controller   the loop: leases and topics from the bucket -> liveness -> assign -> publish (file or ConfigMap)
kube_objects pure builders: the placement ConfigMap
handlers     the kopf timer that runs one controller tick per clustered EventBroker
"""
