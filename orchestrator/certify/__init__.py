"""Certification of a stage's finalists on the test split, in shards that run as Ray tasks
across the cluster (``phase``), each writing its per-image results to the storage (``shards``).
Cheap to import: Ray loads inside the functions that use it."""

from .phase import Finalist, Settings, certification_dir, plan, run

__all__ = ["Finalist", "Settings", "certification_dir", "plan", "run"]
