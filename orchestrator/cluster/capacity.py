"""What a trial needs and how many fit: a trial that can never fit (a worker bigger than every
node type, a trial bigger than the whole cluster at its maximum) is refused before anything runs;
concurrency is what the cluster can hold at its maximum divided by a trial's worker group (Tune
does not count worker groups); the sweep waits a bounded time for the first trial's resources,
asking the autoscaler for them, and fails naming what is missing. It never waits forever."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainables.errors import ConfigError

from .shape import ClusterShape

# Per-trial drivers hold one unit of this custom resource instead of a CPU sliver, so that
# trial worker groups pack onto whole CPUs/GPUs. Local runs define it; cluster files give it
# to the head node. Without it, drivers take 0.01 CPU and the concurrency cap counts that.
DRIVER_RESOURCE = "sweep_driver"


class ResourceError(ConfigError):
    """The cluster cannot (or did not in time) provide what a trial needs."""


@dataclass(frozen=True)
class TrialNeed:
    """One trial's worker group: ``num_workers`` bundles of ``bundle`` (a bundle never spans
    nodes), plus its driver's resources, which live on the head."""

    num_workers: int
    bundle: dict[str, float]
    driver: dict[str, float] = field(default_factory=dict)

    @property
    def counted_bundle(self) -> dict[str, float]:
        """A worker's bundle with its share of the driver's CPU sliver when the driver takes
        one (no ``sweep_driver`` resource): counting it keeps a worker group from being
        squeezed out by the drivers of the trials around it."""
        b = dict(self.bundle)
        if self.driver.get("CPU"):
            b["CPU"] = b.get("CPU", 0.0) + self.driver["CPU"] / self.num_workers
        return b

    def describe(self) -> str:
        return f"{self.num_workers} worker(s) x {_fmt(self.bundle)}"


def trial_need(
    num_workers: int, cpus_per_worker: float, gpus_per_worker: float, driver: Mapping[str, float] | None = None
) -> TrialNeed:
    bundle = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker > 0:
        bundle["GPU"] = float(gpus_per_worker)
    return TrialNeed(int(num_workers), bundle, dict(driver or {}))


def _fmt(res: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


def _fits(bundle: Mapping[str, float], node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v - 1e-9 for k, v in bundle.items() if v > 0)


def _copies(bundle: Mapping[str, float], node: Mapping[str, float]) -> int:
    """How many ``bundle``s one node holds."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 0


def max_trials(shape: ClusterShape, need: TrialNeed) -> int:
    """Trials the cluster holds at once at its largest (the head and every worker type at
    its max_workers, within the cluster's max_workers), refusing a trial that never fits."""
    head = next(t for t in shape.node_types if t.name == shape.head_type)
    hosts = [(head, 1)]
    if shape.can_grow_beyond_head:
        # fill the cluster-wide worker budget with the node types that hold the most workers
        budget = shape.max_workers
        for t in sorted(shape.workers, key=lambda t: -_copies(need.bundle, t.resources)):
            n = min(t.max_workers, budget)
            if n > 0:
                hosts.append((t, n))
                budget -= n
    fitting = [t for t in shape.node_types if _fits(need.bundle, t.resources)]
    if not fitting:
        largest = max(shape.node_types, key=lambda t: (t.resources.get("GPU", 0), t.resources.get("CPU", 0)))
        raise ResourceError(
            f"resources: a worker needs {_fmt(need.bundle)}, more than any node type of {shape.source} offers "
            f"(largest: {largest.name} {_fmt(largest.resources)}); lower --gpus-per-worker/cpus_per_worker "
            f"or add a larger node type"
        )
    workers_at_max = sum(_copies(need.bundle, t.resources) * n for t, n in hosts)
    if workers_at_max < need.num_workers:
        raise ResourceError(
            f"resources: a trial needs {need.describe()}; {shape.source} can grow to at most "
            f"{workers_at_max} such worker(s) (max_workers {shape.max_workers}); lower --num-workers"
        )
    return workers_at_max // need.num_workers


def trials_that_fit(nodes_resources: list[Mapping[str, float]], need: TrialNeed) -> int:
    """Trials that the nodes present now hold at once (bundles packed per node)."""
    workers = sum(_copies(need.counted_bundle, r) for r in nodes_resources)
    return workers // need.num_workers


def alive_node_resources() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in alive_nodes()]


def concurrency(
    shape: ClusterShape | None, need: TrialNeed, requested: int | None, nodes_now: list[Mapping[str, float]]
) -> int:
    """How many trials run at once: bounded by what the cluster can grow to when its config is
    known, by ``requested`` (--max-concurrent-trials) otherwise, and never more than either."""
    if shape is not None and shape.fully_declared:
        cap = max(1, max_trials(shape, need))
        return min(cap, requested) if requested else cap
    if requested:
        return requested
    return max(1, trials_that_fit(nodes_now, need))


def wait_for_first_trial(
    need: TrialNeed,
    timeout_s: float,
    *,
    poll_s: float = 2.0,
    nodes: Callable[[], list[dict[str, float]]] = alive_node_resources,
    say: Callable[[str], None] = print,
) -> None:
    """Return once the cluster holds one trial's worker group; until then ask the autoscaler
    for it. After ``timeout_s`` fail with the resources that are missing."""
    if trials_that_fit(nodes(), need) >= 1:
        return
    from ray.autoscaler.sdk import request_resources

    bundles = [dict(need.bundle) for _ in range(need.num_workers)]
    say(f"waiting up to {timeout_s:.0f} s for the cluster to provide {need.describe()} (asked the autoscaler)")
    request_resources(bundles=bundles)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            if trials_that_fit(nodes(), need) >= 1:
                return
        present = nodes()
        total: dict[str, float] = {}
        for r in present:
            for k in ("CPU", "GPU"):
                total[k] = total.get(k, 0.0) + r.get(k, 0.0)
        raise ResourceError(
            f"resources: no room for one trial ({need.describe()}) after waiting {timeout_s:.0f} s "
            f"(--resource-timeout); the cluster has {len(present)} node(s) with {_fmt(total)} in all; "
            f"missing: {_missing(need, present)}"
        )
    finally:
        request_resources(bundles=[])  # the autoscaler is driven by the trials from here on


def _missing(need: TrialNeed, present: list[Mapping[str, float]]) -> str:
    have = sum(_copies(need.counted_bundle, r) for r in present)
    short = need.num_workers - have
    return f"{short} more node slot(s) of {_fmt(need.bundle)}"


def driver_resources() -> dict[str, float]:
    import ray

    return {DRIVER_RESOURCE: 1} if ray.cluster_resources().get(DRIVER_RESOURCE) else {"CPU": 0.01}


def plan_need(resources, driver: Mapping[str, float] | None = None) -> TrialNeed:
    """What one trial of a study's ``resources`` needs."""
    return trial_need(resources.num_workers, resources.cpus_per_worker, resources.gpus_per_worker, driver)


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]
