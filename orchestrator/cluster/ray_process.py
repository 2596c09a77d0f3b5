"""Joining or starting Ray: the address to join (never a cluster the user did not name), the
private local Ray's session directory and address file, its start (retried when a loaded machine
misses Ray's fixed start-up waits), the console kept free of raylet noise, and the tidy-up."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from trainables.errors import ConfigError

from .capacity import DRIVER_RESOURCE
from .shape import BOOTSTRAP_CONFIG


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
        say(
            f"ray: {BOOTSTRAP_CONFIG} is here but no Ray runs on this machine (a head node after `ray down`): "
            "starting a private local Ray"
        )
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


def quiet() -> None:
    """Tune's start-of-experiment box (its legacy reporter at verbose 0 prints nothing), MLflow's
    "View run" per trial, and the local raylet's warning that trial drivers and worker groups
    start more Python processes than it has CPUs (expected here: drivers hold no CPU)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "16")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    quiet_raylet_warnings()  # a joined cluster's raylets were started without the setting above


def lean_train_settings() -> None:
    """A private Ray on this machine: Ray Train's controller polls its workers every 0.5 s (not 2
    s: a trial starts and ends seconds sooner), runs no preemption watcher (an actor process per
    trial that watches for a cloud's spot-instance notices) and no Prometheus metrics (a callback
    on the controller and on every worker; the trials' metrics go to MLflow). They reach every
    Ray process through the environment this process starts Ray with; a user's own settings win."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


def start_ray(
    address: str | None, verbose: bool = False, temp_dir: str | None = None, say: Callable[[str], None] = print
) -> None:
    """Join ``address``, or start a private local Ray (never another cluster on this machine)
    with its session files in ``temp_dir``; a local start that times out is tried once more."""
    import ray

    # The dashboard (ray[default]) must run: without it a trial that ASHA stops early never
    # releases its worker group's placement group and later trials wait forever. It listens
    # on 127.0.0.1 only.
    kw = dict(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=verbose,
        configure_logging=True,
        logging_level="INFO" if verbose else "ERROR",
    )
    if not verbose:
        quiet()
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError) as e:
            hint = (
                ""
                if os.environ.get("RAY_AUTH_MODE") == "token"
                else "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and put its token in "
                "~/.ray/auth_token"
            )
            raise ConfigError(f"Ray address {address}: cannot join ({str(e).splitlines()[0][:200]}){hint}") from None
        return
    lean_train_settings()
    if temp_dir:  # the processes of this Ray find it, not another one on the machine (own_address_file)
        os.environ["RAY_TMPDIR"] = temp_dir
    local = dict(
        address="local", resources={DRIVER_RESOURCE: 10_000}, **({"_temp_dir": temp_dir} if temp_dir else {}), **kw
    )
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
        raise ConfigError(
            f"Ray address {address}: unreachable ({e.strerror or type(e).__name__}); "
            f"is the cluster up (ray up / ray start --head)?"
        ) from None
