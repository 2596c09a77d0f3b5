"""What the Ray cluster is and what it can grow to: concurrency, feasibility, storage.

A study submitted to an autoscaling cluster usually starts with no GPU worker at all, so the
cluster's present size says nothing about what a study can use. What it can grow to comes
from the cluster launcher's config (``--cluster-config``, or ``~/ray_bootstrap_config.yaml``
on a head node started by ``ray up``, where ``ray submit`` runs the sweep). From it:

- a trial that can never fit (a worker bigger than every node type, or a trial bigger than the
  whole cluster at its maximum) is refused before anything runs;
- concurrency is what the cluster can hold at its maximum, divided by a trial's worker group
  (Tune does not count worker groups, and an oversubscribed one waits forever);
- whether the cluster is multi-node (then a node-local ``--storage-path`` cannot work).

Without the config, concurrency comes from ``--max-concurrent-trials`` (or what exists now),
and the sweep waits a bounded time for the first trial's resources to appear, asking the
autoscaler for them, before it fails naming what is missing. It never waits forever.
"""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from trainables.errors import ConfigError

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # left on the head node by `ray up`
# Per-trial drivers hold one unit of this custom resource instead of a CPU sliver, so that
# trial worker groups pack onto whole CPUs/GPUs. Local runs define it; cluster files give it
# to the head node. Without it, drivers take 0.01 CPU and the concurrency cap counts that.
DRIVER_RESOURCE = "sweep_driver"

# File systems that every node of a cluster can share; a --storage-path on one of them is fine
# on a multi-node cluster (Ray Train needs every node to reach every checkpoint).
SHARED_FS_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "cephfs", "ceph",
                   "glusterfs", "fuse.gcsfuse", "fuse.s3fs", "fuse.juicefs", "fuse.mountpoint-s3", "wekafs")
# Providers whose nodes all run on this one machine (so they share its disk).
SINGLE_HOST_PROVIDERS = ("fake_multinode",)


class ResourceError(ConfigError):
    """The cluster cannot (or did not in time) provide what a trial needs."""


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
        types.append(NodeType(name=str(name), resources=res, min_workers=int(t.get("min_workers", 0) or 0),
                              max_workers=int(t.get("max_workers", 0) or 0), declared=bool(res)))
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
        raise ConfigError(f"--cluster-config {p}: not a valid Ray cluster config ({str(e).splitlines()[0][:200]})") from None


def find_cluster_config(explicit: str | None, bootstrap: str = BOOTSTRAP_CONFIG) -> ClusterShape | None:
    """--cluster-config if given, else the bootstrap config of a `ray up` head node, else None."""
    if explicit:
        return read_cluster_config(explicit)
    boot = Path(bootstrap).expanduser()
    if boot.is_file():
        return read_cluster_config(boot)
    return None


# ----------------------------------------------------------------------------- what a trial needs
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


def trial_need(num_workers: int, cpus_per_worker: float, gpus_per_worker: float,
               driver: Mapping[str, float] | None = None) -> TrialNeed:
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
            f"or add a larger node type")
    workers_at_max = sum(_copies(need.bundle, t.resources) * n for t, n in hosts)
    if workers_at_max < need.num_workers:
        raise ResourceError(
            f"resources: a trial needs {need.describe()}; {shape.source} can grow to at most "
            f"{workers_at_max} such worker(s) (max_workers {shape.max_workers}); lower --num-workers")
    return workers_at_max // need.num_workers


def trials_that_fit(nodes_resources: list[Mapping[str, float]], need: TrialNeed) -> int:
    """Trials that the nodes present now hold at once (bundles packed per node)."""
    workers = sum(_copies(need.counted_bundle, r) for r in nodes_resources)
    return workers // need.num_workers


def alive_node_resources() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in alive_nodes()]


def concurrency(shape: ClusterShape | None, need: TrialNeed, requested: int | None,
                nodes_now: list[Mapping[str, float]]) -> int:
    """How many trials run at once: bounded by what the cluster can grow to when its config is
    known, by ``requested`` (--max-concurrent-trials) otherwise, and never more than either."""
    if shape is not None and shape.fully_declared:
        cap = max(1, max_trials(shape, need))
        return min(cap, requested) if requested else cap
    if requested:
        return requested
    return max(1, trials_that_fit(nodes_now, need))


def wait_for_first_trial(need: TrialNeed, timeout_s: float, *, poll_s: float = 2.0,
                         nodes: Callable[[], list[dict[str, float]]] = alive_node_resources,
                         say: Callable[[str], None] = print) -> None:
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
            f"missing: {_missing(need, present)}")
    finally:
        request_resources(bundles=[])  # the autoscaler is driven by the trials from here on


def _missing(need: TrialNeed, present: list[Mapping[str, float]]) -> str:
    have = sum(_copies(need.counted_bundle, r) for r in present)
    short = need.num_workers - have
    return f"{short} more node slot(s) of {_fmt(need.bundle)}"


# ----------------------------------------------------------------------------- storage
def fs_type(path: str | os.PathLike) -> str | None:
    """The file-system type of the mount holding ``path`` (Linux /proc/mounts), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    p = os.path.realpath(path)
    best, kind = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")  # what Ray's storage (pyarrow) opens


def check_storage(storage_path: str, *, multi_node: bool, declared_shared: bool, where: str) -> None:
    """A node-local --storage-path cannot work on a multi-node cluster: a worker restarted on
    another node would not find its checkpoints, and Ray Train refuses to sync them."""
    if "://" in storage_path:
        scheme = storage_path.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            raise ConfigError(f"--storage-path {storage_path}: unknown scheme {scheme!r}; expected a directory or "
                              f"one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}")
        return
    if not multi_node or declared_shared:
        return
    existing = Path(storage_path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    kind = fs_type(existing)
    if kind in SHARED_FS_TYPES:
        return
    raise ConfigError(
        f"--storage-path {storage_path}: a local directory ({kind or 'unknown'} file system) on a multi-node "
        f"cluster ({where}); use shared storage: s3://BUCKET/PATH, gs://BUCKET/PATH, or a path on an NFS mount "
        f"present on every node (add --shared-storage if it is one this check does not recognise)")


def is_multi_node(shape: ClusterShape | None, nodes_now: list[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether trials may run on more than one machine, and why we think so."""
    if shape is not None:
        if shape.single_host:
            return False, f"{shape.provider} provider: every node runs on this machine"
        if shape.can_grow_beyond_head:
            return True, f"{shape.source} allows {shape.max_workers} worker node(s)"
    hosts = {n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in nodes_now}
    if len(hosts) > 1:
        return True, f"{len(hosts)} machines are in the cluster now"
    return False, "one machine"


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


# ----------------------------------------------------------------------------- joining or starting Ray
def ray_address(explicit: str | None, say: Callable[[str], None] = print) -> str | None:
    """The cluster to join: --address, $RAY_ADDRESS, or this node's cluster when it is a head
    started by `ray up` (where `ray submit` runs us) and that cluster still runs. None: start a
    private local Ray, never join some other cluster that happens to run on this machine."""
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if Path(BOOTSTRAP_CONFIG).expanduser().is_file():
        # `ray down` leaves the file behind: it says this was a head node, not that it is one
        if local_ray_running():
            say(f"ray: joining the cluster of this head node ({BOOTSTRAP_CONFIG} and a running Ray)")
            return "auto"
        say(f"ray: {BOOTSTRAP_CONFIG} is here but no Ray runs on this machine (a head node after `ray down`): "
            "starting a private local Ray")
    return None


def local_ray_running() -> bool:
    """Whether a Ray cluster's GCS server runs on this machine."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["name"] == "gcs_server" or (cmd and os.path.basename(cmd[0]) == "gcs_server"):
                return True
        except (psutil.Error, OSError):
            continue
    return False


SOCKET_DIR_MAX = 37  # Ray's sockets are <temp>/session_<time>_<pid>/sockets/<name>: 107 bytes at most in all


def ray_temp_dir(output_dir: Path) -> str:
    """Where a private local Ray keeps its session files and logs: ``<output>/ray-tmp``, not
    /tmp/ray. Unix socket paths are limited to 107 bytes, so when that path is too long Ray is
    given a short link to it in a fresh directory under $TMPDIR, removed when the sweep exits."""
    import atexit
    import shutil
    import tempfile

    real = output_dir / "ray-tmp"
    real.mkdir(parents=True, exist_ok=True)
    if len(str(real).encode()) <= SOCKET_DIR_MAX:
        return str(real)
    link_dir = Path(tempfile.mkdtemp(prefix="sprout-ray-"))
    (link_dir / "t").symlink_to(real, target_is_directory=True)
    atexit.register(shutil.rmtree, link_dir, ignore_errors=True)
    return str(link_dir / "t")


def tidy_session(output_dir: Path) -> int:
    """After a private local Ray stopped: remove what makes its session directory look alive
    (Unix sockets, links into the removed short temp directory: tools that walk a project, such
    as ``ray up``'s file-mount hash, fail on both; the address file of ``own_address_file``),
    keeping its logs as plain files. Returns how many entries went."""
    import stat

    root = Path(output_dir) / "ray-tmp"
    gone = 0
    if not root.is_dir() or root.is_symlink():
        return 0
    if own_address_file(root).is_file():  # the address of a Ray that is gone
        own_address_file(root).unlink()
        gone += 1
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            try:
                mode = p.lstat().st_mode
                if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                    p.unlink()
                    gone += 1
            except OSError:
                continue
    return gone


# What ray.init raises when the local node's processes did not come up in time: its raylet
# waits a fixed 15 s for the dashboard agent's port file and exits after it, and ray.init waits a
# fixed 30 s for the raylet (ray-project/ray#65983). On a loaded machine (a busy head node, two
# cores shared with other work) both happen; neither wait can be set, so the start is tried again.
SLOW_START = "timed out during startup"


def start_ray(address: str | None, verbose: bool = False, temp_dir: str | None = None,
              say: Callable[[str], None] = print) -> None:
    """Join ``address``, or start a private local Ray (never another cluster on this machine)
    with its session files in ``temp_dir``; a local start that times out is tried once more."""
    import ray

    # The dashboard (ray[default]) must run: without it a trial that ASHA stops early never
    # releases its worker group's placement group and later trials wait forever. It listens
    # on 127.0.0.1 only.
    kw = dict(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=verbose,
              configure_logging=True, logging_level="INFO" if verbose else "ERROR")
    if not verbose:
        # Tune's start-of-experiment box (its legacy reporter at verbose 0 prints nothing), and
        # the local raylet's warning that trial drivers and worker groups start more Python
        # processes than it has CPUs (they are expected here: drivers hold no CPU)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "16")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ..." per trial
        quiet_raylet_warnings()  # a joined cluster's raylets were started without the setting above
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError) as e:
            hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                    "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and put its token in "
                    "~/.ray/auth_token")
            raise ConfigError(f"Ray address {address}: cannot join ({str(e).splitlines()[0][:200]}){hint}") from None
        return
    # A private Ray on this machine: Ray Train's controller polls its workers every 0.5 s (not 2 s:
    # a trial starts and ends seconds sooner) and runs no preemption watcher (an actor process
    # per trial that watches for a cloud's spot-instance notices). Both reach every Ray process
    # through the environment this process starts Ray with; a user's own settings win.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if temp_dir:  # the processes of this Ray find it, not another one on the machine (own_address_file)
        os.environ["RAY_TMPDIR"] = temp_dir
    local = dict(address="local", resources={DRIVER_RESOURCE: 10_000}, **({"_temp_dir": temp_dir} if temp_dir else {}), **kw)
    try:
        ray.init(**local)
    except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this
        if SLOW_START not in str(e):
            raise
        say("ray: the local Ray did not start in time (the machine is busy); starting it once more")
        ray.shutdown()
        ray.init(**local)
    if temp_dir:
        f = own_address_file(temp_dir)
        f.parent.mkdir(exist_ok=True)
        f.write_text(ray.get_runtime_context().gcs_address)


def own_address_file(temp_dir: str | Path) -> Path:
    """Where the processes of a private Ray started with ``RAY_TMPDIR=temp_dir`` look for its
    address. Ray's State API, called without an address inside Ray's own processes (Ray Train's
    placement-group cleaner asks it every second whether a trial's controller is alive), lists
    the GCS processes on the machine; with a second Ray beside this one (another study, a test)
    it raises, the cleaner's thread dies, and the worker group of a trial that ASHA stopped keeps
    its CPUs and GPUs: later trials and the certification wait forever. Given this file it
    connects to the address in it (``ray._private.services.get_ray_address_from_environment``)."""
    return Path(temp_dir) / "ray" / "ray_current_cluster"


# What the raylets of a cluster say to every driver that the sweep's console has no use for:
# trial drivers hold no CPU and worker groups start many Python processes on purpose.
RAYLET_NOISE = ("maximum expected startup concurrency",)


def quiet_raylet_warnings() -> None:
    """Drop the raylets' worker-pool warnings from this driver's console (``--verbose`` keeps
    them). Ray prints them from a thread of its own through ``print_to_stdstream``, whatever
    ``log_to_driver`` says; without that function (another Ray version) nothing changes."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_sprout_quiet", False):
        return

    def print_to_stdstream(data, ignore_prefix: bool = False):
        if data.get("pid") == "raylet":
            data = {**data, "lines": [x for x in data.get("lines", []) if not any(n in x for n in RAYLET_NOISE)]}
            if not data["lines"]:
                return
        return original(data, ignore_prefix=ignore_prefix)

    print_to_stdstream._sprout_quiet = True
    ray_worker.print_to_stdstream = print_to_stdstream


def driver_resources() -> dict[str, float]:
    import ray

    return {DRIVER_RESOURCE: 1} if ray.cluster_resources().get(DRIVER_RESOURCE) else {"CPU": 0.01}


def plan_need(resources, driver: Mapping[str, float] | None = None) -> TrialNeed:
    """What one trial of a study's ``resources`` needs."""
    return trial_need(resources.num_workers, resources.cpus_per_worker, resources.gpus_per_worker, driver)


def check_address_reachable(address: str, timeout_s: float = 5.0) -> None:
    """An explicit Ray address must answer before we try to join it (``ray.init`` on a dead
    address retries for a long time)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r}: expected HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"Ray address {address}: unreachable ({e.strerror or type(e).__name__}); "
                          f"is the cluster up (ray up / ray start --head)?") from None
