"""Shared fixtures, and the two tiers.

The fast tier (``pytest -m "not slow"``, about 2 minutes) holds every unit test: no Ray, no
AutoAttack, no training beyond a few seconds. Everything else is marked ``slow``. A test that is
not marked slow and calls ``ray.init`` in this process fails (``_no_ray_in_the_fast_tier``).

What is expensive is made once per session and shared by the tests that only read it: the
smoke sweep (``smoke_sweep``) and a naturally trained digits model (``natural_digits``).

The suite runs in two processes (pytest-xdist, ``-n 2 --dist loadgroup`` in pyproject.toml). The
tests that start Ray sweeps (the slow tests of the files in ``RAY_GROUPS``) run in groups, each
group in one process, one sweep at a time: two sweeps at once on two cores only slow each other
down (measured: 27 min 36 s with the sweeps spread freely, and one ASHA sweep ran past its
10-minute limit). The sweeps of the local Ray (``ray``) are one group; the simulated cluster's
(``cluster``), which mostly wait for its autoscaler, are another, so that the process that runs
everything else (unit tests, AutoAttack, the benchmarks) takes them too (with all sweeps in one
group that process idled for its last 10 of 24 minutes). The ASHA sweep is a group of its own
(``OWN_GROUP``): a one-test group is queued among the single tests, so that process runs it when
it reaches it, beside the end of ``ray`` (with it in ``ray``, that process idled ~6 minutes). A test that kills processes kills only
its own sweep's or cluster's (``helpers.descendants``)."""

import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT

sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# a `ray up` head's cluster file left in the home directory (cluster/loopback_check.py leaves one,
# as `ray down` does) must not make a test's sweep try to join whatever Ray runs on the machine
os.environ["SPROUT_BOOTSTRAP_CONFIG"] = ""
# the machine's cores shared between pytest-xdist's processes, in this process and in every process
# a test starts (benchmarks, the training command, sweeps' drivers): two threads each thrash two
# cores (measured on 2 cores: two copies of the GPU-acceptance code path at once took 127 s with two
# OpenMP threads each, 24 s with one; in the suite that test took 154 s). Only in an xdist worker:
# the controlling pytest process imports this file too, without a worker count, and its workers
# inherit its environment, so a value it set would be theirs.
THREADS = max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


# the files whose slow tests start Ray sweeps, and their group: one process, one sweep at a time
RAY_GROUPS = {
    "test_reports.py": "ray",
    "test_selection.py": "ray",
    "test_reliability.py": "ray",
    "test_sweep.py": "ray",
    "test_fake_cluster.py": "cluster",
}
# a sweep in a group of its own: the other process runs it when it reaches it (after the unit
# tests, AutoAttack and the benchmarks), beside the end of the "ray" group
OWN_GROUP = {"test_asha_stops_trials_early_and_later_trials_still_run": "asha"}


def _group(item) -> str | None:
    if item.get_closest_marker("slow") is None:
        return None
    return OWN_GROUP.get(item.originalname) or RAY_GROUPS.get(Path(str(item.fspath)).name)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _group(item):
            item.add_marker(pytest.mark.xdist_group(_group(item)))


def pytest_runtest_setup(item):
    """In an xdist worker with --dist loadgroup, a Ray test must carry xdist's group suffix: a pytest
    that xdist cannot suffix would spread the sweeps over both processes without a word."""
    if (
        getattr(item.config.option, "loadgroup", False)
        and _group(item)
        and not item.nodeid.endswith(f"@{_group(item)}")
    ):
        pytest.fail(
            "pytest-xdist did not put this Ray test in its group: this pytest and pytest-xdist do not work "
            "together; install the versions pyproject.toml names",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def digits():
    from trainables.data import get_dataset

    return get_dataset("digits")


@pytest.fixture(scope="session")
def natural_digits(digits):
    """A small CNN trained naturally for 8 epochs on digits (eval mode; about 3 s). Shared: no
    test may change its weights."""
    from trainables.config import resolve
    from trainables.loop import build, fit

    comp = build(resolve({"method": "natural", "epochs": 8, "monitor": {"every": 0}}))
    fit(comp)
    net = comp.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)  # attacks need input gradients only; a test that trains it fails
    return net


@pytest.fixture(scope="session")
def natural(natural_digits):
    """The attack tests' name for the shared natural model."""
    return natural_digits


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """The README's main job with --smoke-test (the sensitivity study, 3 Optuna trials, the quick
    protocol with AutoAttack), run once per session through local Ray; its output directory and
    completed process. The tests that read it are in tests/test_sweep.py."""
    from helpers import sweep

    out = tmp_path_factory.mktemp("sens")
    # its start-up trace (orchestrator/tuner/trace.py), beside the output: which process ran what
    env = {**os.environ, "SPROUT_TRACE_STARTUP": str(out.parent / f"{out.name}-trace.jsonl")}
    return out, sweep("--smoke-test", "--output-dir", str(out), cwd=out, env=env)


@pytest.fixture
def tiny_batch():
    """8 random 1x8x8 images in [0, 1] with labels of 10 classes."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.fixture(autouse=True)
def _no_ray_in_the_fast_tier(request, monkeypatch):
    """The fast tier starts no Ray: a test not marked slow that calls ray.init fails here."""
    if request.node.get_closest_marker("slow") is None and "ray" in sys.modules:
        import ray

        def refuse(*a, **k):
            raise AssertionError(f"{request.node.nodeid} starts Ray: mark it @pytest.mark.slow")

        monkeypatch.setattr(ray, "init", refuse)
