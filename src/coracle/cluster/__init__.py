"""State shared by several hosts: the cluster store (etcd v3) and this host's membership in it."""
