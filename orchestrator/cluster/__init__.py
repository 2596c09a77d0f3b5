"""The cluster a study runs on: what it can grow to (``shape``), what a trial needs and how many
fit (``capacity``), where checkpoints may go (``storage``), joining or starting Ray
(``ray_process``) and the MLflow tracking server (``mlflow_server``). Cheap to import: Ray loads
inside the functions that use it."""

from .capacity import (
    DRIVER_RESOURCE,
    ResourceError,
    TrialNeed,
    alive_node_resources,
    alive_nodes,
    concurrency,
    driver_resources,
    max_trials,
    plan_need,
    trial_need,
    trials_that_fit,
    wait_for_first_trial,
)
from .mlflow_server import check_tracking_uri, default_tracking_uri, normalize_uri
from .ray_process import (
    check_address_reachable,
    local_ray_running,
    own_address_file,
    quiet_raylet_warnings,
    ray_address,
    ray_temp_dir,
    start_ray,
    tidy_session,
)
from .shape import BOOTSTRAP_CONFIG, ClusterShape, NodeType, find_cluster_config, read_cluster_config
from .storage import SHARED_FS_TYPES, STORAGE_ENV, STORAGE_SCHEMES, check_storage, fs_type, is_multi_node, probe_storage

__all__ = [
    "BOOTSTRAP_CONFIG",
    "DRIVER_RESOURCE",
    "SHARED_FS_TYPES",
    "STORAGE_ENV",
    "STORAGE_SCHEMES",
    "ClusterShape",
    "NodeType",
    "ResourceError",
    "TrialNeed",
    "alive_node_resources",
    "alive_nodes",
    "check_address_reachable",
    "check_storage",
    "check_tracking_uri",
    "concurrency",
    "default_tracking_uri",
    "driver_resources",
    "find_cluster_config",
    "fs_type",
    "is_multi_node",
    "local_ray_running",
    "max_trials",
    "normalize_uri",
    "own_address_file",
    "plan_need",
    "probe_storage",
    "quiet_raylet_warnings",
    "ray_address",
    "ray_temp_dir",
    "read_cluster_config",
    "start_ray",
    "tidy_session",
    "trial_need",
    "trials_that_fit",
    "wait_for_first_trial",
]
