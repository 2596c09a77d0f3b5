"""What an autoscaling cluster can grow to, read from the cluster launcher's config
(``--cluster-config``, or ``~/ray_bootstrap_config.yaml`` on a head node started by ``ray up``,
where ``ray submit`` runs the sweep): its node types and their resources and counts. A study
submitted to an autoscaling cluster usually starts with no GPU worker at all, so the cluster's
present size says nothing about what a study can use."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError

# left on the head node by `ray up`; SPROUT_BOOTSTRAP_CONFIG names another place, and empty means
# this machine is never taken for a head node (the tests set it so: a file left in the home
# directory by a launcher check must not change what a test's sweep joins)
BOOTSTRAP_CONFIG = os.environ.get("SPROUT_BOOTSTRAP_CONFIG", "~/ray_bootstrap_config.yaml")

# Providers whose nodes all run on this one machine (so they share its disk).
SINGLE_HOST_PROVIDERS = ("fake_multinode",)


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]  # per node, as Ray will advertise it
    min_workers: int
    max_workers: int
    declared: bool  # False when the config leaves resources to the cloud provider to detect


@dataclass(frozen=True)
class ClusterShape:
    """The node types of a cluster launcher config and the most nodes it may run."""

    source: str
    provider: str
    head_type: str
    node_types: tuple[NodeType, ...]
    max_workers: int  # all worker nodes together

    @property
    def workers(self) -> tuple[NodeType, ...]:
        """Node types that worker nodes can have (the head's own type too when it allows
        workers, as the ``local`` provider's single type does)."""
        return tuple(t for t in self.node_types if t.max_workers > 0)

    @property
    def fully_declared(self) -> bool:
        """Every node type states its resources (else what the cluster can grow to is unknown:
        a cloud provider fills them in only when it starts the node)."""
        return all(t.declared for t in self.node_types if t.name == self.head_type or t.max_workers > 0)

    @property
    def can_grow_beyond_head(self) -> bool:
        return self.max_workers > 0 and any(t.max_workers > 0 for t in self.workers)

    @property
    def single_host(self) -> bool:
        return self.provider in SINGLE_HOST_PROVIDERS


def read_cluster_config(path: str | os.PathLike) -> ClusterShape:
    """Parse a Ray cluster launcher config (YAML or JSON) into its node types."""
    from trainables.schema import load_yaml_file

    p = Path(path).expanduser()
    raw = load_yaml_file(p, "--cluster-config", aliases=True)
    if isinstance(raw, Mapping) and "available_node_types" not in raw and "provider" in raw:
        raw = _prepared(raw, p)  # a legacy-format file (head_ip/worker_ips): as `ray up` reads it
    if not isinstance(raw, Mapping) or not isinstance(raw.get("available_node_types"), Mapping):
        raise ConfigError(f"--cluster-config {p}: expected a Ray cluster config with available_node_types")
    types = []
    for name, t in raw["available_node_types"].items():
        t = t or {}
        res = {k: float(v) for k, v in (t.get("resources") or {}).items()}
        types.append(
            NodeType(
                name=str(name),
                resources=res,
                min_workers=int(t.get("min_workers", 0) or 0),
                max_workers=int(t.get("max_workers", 0) or 0),
                declared=bool(res),
            )
        )
    head = str(raw.get("head_node_type", ""))
    if head not in {t.name for t in types}:
        raise ConfigError(f"--cluster-config {p}: head_node_type {head!r} is not one of available_node_types")
    provider = str((raw.get("provider") or {}).get("type", "unknown"))
    total = raw.get("max_workers")
    cap = int(total) if total is not None else sum(t.max_workers for t in types if t.name != head)
    return ClusterShape(str(p), provider, head, tuple(types), cap)


def _prepared(raw: Mapping[str, Any], p: Path) -> Mapping[str, Any]:
    from ray.autoscaler._private.util import prepare_config

    try:
        return prepare_config(dict(raw))
    except Exception as e:  # noqa: BLE001 - Ray's own validation, any failure is bad input
        raise ConfigError(
            f"--cluster-config {p}: not a valid Ray cluster config ({str(e).splitlines()[0][:200]})"
        ) from None


def find_cluster_config(explicit: str | None, bootstrap: str = BOOTSTRAP_CONFIG) -> ClusterShape | None:
    """--cluster-config if given, else the bootstrap config of a `ray up` head node, else None."""
    if explicit:
        return read_cluster_config(explicit)
    boot = Path(bootstrap).expanduser()
    if boot.is_file():
        return read_cluster_config(boot)
    return None
