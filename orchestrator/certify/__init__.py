"""Certification of a stage's finalists on the test split, in shards that run as Ray tasks
across the cluster (``phase``), each writing its per-image results to the storage (``shards``)."""
