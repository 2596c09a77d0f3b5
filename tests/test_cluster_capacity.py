"""What a cluster can grow to, read from its launcher config: concurrency, trials that can
never fit, the bounded wait for the first trial's resources, and storage on many nodes."""

import os
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster import (
    ResourceError,
    check_storage,
    concurrency,
    is_multi_node,
    max_trials,
    read_cluster_config,
    trial_need,
    wait_for_first_trial,
)
from trainables.errors import ConfigError

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def write(tmp_path, node_types, head="head", max_workers=None, provider="aws"):
    cfg = {
        "cluster_name": "t",
        "provider": {"type": provider},
        "head_node_type": head,
        "available_node_types": node_types,
    }
    if max_workers is not None:
        cfg["max_workers"] = max_workers
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return read_cluster_config(p)


HEAD = {"resources": {"CPU": 0, "sweep_driver": 10000}, "max_workers": 0}


def test_shipped_gpu_cluster_grows_from_zero_gpus_to_its_max():
    shape = read_cluster_config(CLUSTER / "gpu.yaml")
    (worker,) = shape.workers
    assert worker.min_workers == 0 and worker.resources["GPU"] >= 1
    assert concurrency(shape, trial_need(1, 1, 1), None, []) == worker.max_workers * int(worker.resources["GPU"])
    assert concurrency(shape, trial_need(1, 1, 1), 3, []) == 3  # --max-concurrent-trials lowers it


def test_concurrency_packs_workers_per_node_and_respects_the_cluster_max(tmp_path):
    shape = write(
        tmp_path, {"head": HEAD, "g4": {"resources": {"CPU": 32, "GPU": 4}, "max_workers": 10}}, max_workers=2
    )
    # 2 nodes at most (cluster max_workers), 4 one-GPU workers each, 2 workers per trial
    assert max_trials(shape, trial_need(2, 4, 1)) == 4
    # a worker of 16 CPUs: 2 per node (CPU-bound), so 2 nodes x 2 = 4 one-worker trials
    assert max_trials(shape, trial_need(1, 16, 1)) == 4


def test_a_worker_bigger_than_every_node_type_is_refused(tmp_path):
    shape = write(tmp_path, {"head": HEAD, "g1": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 8}})
    with pytest.raises(ResourceError, match=r"a worker needs \{CPU: 1, GPU: 2\}, more than any node type"):
        max_trials(shape, trial_need(1, 1, 2))


def test_a_trial_bigger_than_the_whole_cluster_is_refused(tmp_path):
    shape = write(tmp_path, {"head": HEAD, "g1": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 8}}, max_workers=3)
    with pytest.raises(ResourceError, match=r"can grow to at most 3 such worker\(s\)"):
        max_trials(shape, trial_need(4, 1, 1))


def test_without_a_config_concurrency_is_the_flag_or_what_exists(tmp_path):
    need = trial_need(2, 1, 0, driver={"sweep_driver": 1})
    assert concurrency(None, need, 5, [{"CPU": 2}]) == 5
    assert concurrency(None, need, None, [{"CPU": 4}, {"CPU": 2}]) == 3
    # a driver taking a CPU sliver counts: 2 CPUs hold no 2x1-CPU worker group beside it
    assert concurrency(None, trial_need(2, 1, 0, driver={"CPU": 0.01}), None, [{"CPU": 4}]) == 1


def test_waiting_for_resources_is_bounded_and_names_what_is_missing(monkeypatch):
    import ray.autoscaler.sdk as sdk

    asked = []
    monkeypatch.setattr(sdk, "request_resources", lambda bundles=None, **kw: asked.append(bundles))
    with pytest.raises(
        ResourceError,
        match=r"after waiting 1 s \(--resource-timeout\).*missing: 2 more node slot\(s\) of \{CPU: 1, GPU: 1\}",
    ):
        wait_for_first_trial(trial_need(2, 1, 1), 1.0, poll_s=0.2, nodes=lambda: [{"CPU": 4}], say=lambda s: None)
    assert asked[0] == [{"CPU": 1.0, "GPU": 1.0}] * 2 and asked[-1] == []  # asked the autoscaler, then withdrew


def test_waiting_ends_as_soon_as_a_node_arrives(monkeypatch):
    import ray.autoscaler.sdk as sdk

    asked = []
    monkeypatch.setattr(sdk, "request_resources", lambda bundles=None, **kw: asked.append(bundles))
    arrivals = [[{"CPU": 4}], [{"CPU": 4}], [{"CPU": 4}, {"CPU": 1, "GPU": 1}], [{"CPU": 4}]]
    polls = []

    def nodes():
        polls.append(1)
        return list(arrivals[min(len(polls), len(arrivals)) - 1])

    lines = []
    wait_for_first_trial(trial_need(1, 1, 1), 60.0, poll_s=0.01, nodes=nodes, say=lines.append)
    # it stopped polling at the third look, when the GPU node was there, and withdrew its request
    assert len(polls) == 3, polls
    assert asked[0] == [{"CPU": 1.0, "GPU": 1.0}] and asked[-1] == []
    assert len(lines) == 1 and "asked the autoscaler" in lines[0]


def test_local_storage_is_refused_on_many_nodes_and_shared_storage_is_not(tmp_path):
    shape = read_cluster_config(CLUSTER / "gpu.yaml")
    multi, why = is_multi_node(shape, [])
    assert multi
    with pytest.raises(
        ConfigError,
        match=r"--storage-path .*multi-node cluster.*s3://BUCKET/PATH, gs://BUCKET/PATH, or a path on an NFS mount",
    ):
        check_storage(str(tmp_path / "ray"), multi_node=multi, declared_shared=False, where=why)
    check_storage("s3://bucket/sprout", multi_node=multi, declared_shared=False, where=why)
    check_storage(str(tmp_path / "nfs"), multi_node=multi, declared_shared=True, where=why)
    check_storage(str(tmp_path / "ray"), multi_node=False, declared_shared=False, where="one machine")


def test_a_fake_multinode_cluster_is_one_machine_and_two_hosts_are_many(tmp_path):
    fake = write(
        tmp_path,
        {
            "ray.head.default": {"resources": {"CPU": 1}, "max_workers": 0},
            "w": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 2},
        },
        head="ray.head.default",
        provider="fake_multinode",
    )
    assert not is_multi_node(fake, [])[0]
    assert is_multi_node(None, [{"NodeManagerHostname": "a"}, {"NodeManagerHostname": "b"}])[0]
    assert not is_multi_node(None, [{"NodeManagerHostname": "a"}])[0]


def test_a_malformed_cluster_config_is_one_clear_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cluster_name: x\n")
    with pytest.raises(ConfigError, match="expected a Ray cluster config with available_node_types"):
        read_cluster_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        read_cluster_config(tmp_path / "missing.yaml")


def test_the_on_premises_file_is_read_as_ray_up_reads_it_and_is_multi_node():
    shape = read_cluster_config(CLUSTER / "local.yaml")
    assert [t.max_workers for t in shape.workers] == [2] and not shape.fully_declared
    assert is_multi_node(shape, [])[0]
    # resources left to detection: concurrency falls back to the flag, nothing is refused
    assert concurrency(shape, trial_need(1, 1, 8), 4, []) == 4


def test_a_local_ray_that_times_out_at_start_is_started_once_more_and_says_so(monkeypatch, tmp_path):
    """A loaded machine: the first ray.init gives up waiting for its raylet (Ray's own error);
    the sweep starts Ray once more, with the same settings, and says so in one line. Any other
    failure, and a second time-out, reach the caller unchanged."""
    import ray

    from orchestrator import cluster

    timeout = Exception(
        "The current node timed out during startup. This could happen because some of the "
        "raylet failed to startup or the GCS has become overloaded."
    )
    calls, lines = [], []

    def fake_init(**kw):
        calls.append(kw)
        if len(calls) in failures:
            raise failures[len(calls)]

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Context", (), {"gcs_address": "127.0.0.1:6380"}))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", "-")  # start_ray sets it for its Ray: monkeypatch undoes it after the test
    failures = {1: timeout}
    cluster.start_ray(None, temp_dir=str(tmp_path), say=lines.append)
    assert calls[1] == "shutdown" and calls[0] == calls[2] and calls[0]["_temp_dir"] == str(tmp_path)
    assert len(lines) == 1 and "once more" in lines[0]
    # its processes find this Ray, not another one on the machine (ray._private.services reads this)
    from ray._private.services import get_ray_address_from_environment

    assert (
        os.environ["RAY_TMPDIR"] == str(tmp_path) and cluster.own_address_file(tmp_path).read_text() == "127.0.0.1:6380"
    )
    assert get_ray_address_from_environment(None, None) == "127.0.0.1:6380"

    calls.clear(), lines.clear()
    failures = {1: timeout, 3: timeout}
    with pytest.raises(Exception, match="timed out during startup"):
        cluster.start_ray(None, say=lines.append)
    assert len([c for c in calls if c != "shutdown"]) == 2 and len(lines) == 1

    calls.clear(), lines.clear()
    failures = {1: RuntimeError("something else")}
    with pytest.raises(RuntimeError, match="something else"):
        cluster.start_ray(None, say=lines.append)
    assert len(calls) == 1 and not lines


def test_a_stale_bootstrap_file_does_not_turn_a_local_run_into_a_failed_join(monkeypatch, tmp_path):
    """`ray down` leaves ~/ray_bootstrap_config.yaml on the head: the sweep joins that node's
    cluster only while a Ray runs there, and says which it chose."""
    from orchestrator.cluster import ray_process as cluster  # where ray_address reads what it patches

    stale = tmp_path / "ray_bootstrap_config.yaml"
    stale.write_text("cluster_name: gone\n")
    monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", str(stale))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    lines = []
    monkeypatch.setattr(cluster, "local_ray_running", lambda: False)
    assert cluster.ray_address(None, say=lines.append) is None
    assert "no Ray runs on this machine" in lines[-1] and "private local Ray" in lines[-1]
    monkeypatch.setattr(cluster, "local_ray_running", lambda: True)
    assert cluster.ray_address(None, say=lines.append) == "auto" and "joining" in lines[-1]
    assert cluster.ray_address("10.0.0.1:6379", say=lines.append) == "10.0.0.1:6379" and len(lines) == 2
    stale.unlink()
    assert cluster.ray_address(None, say=lines.append) is None and len(lines) == 2  # a plain machine: nothing said


def test_where_a_head_keeps_its_cluster_file_can_be_named_or_switched_off(tmp_path):
    """SPROUT_BOOTSTRAP_CONFIG: another place for `ray up`'s file, or empty (never a head node,
    as the tests run)."""
    import subprocess
    import sys

    code = "import orchestrator.cluster as c; print(repr(c.BOOTSTRAP_CONFIG), c.find_cluster_config(None))"
    for value, expected in ((str(tmp_path / "boot.yaml"), repr(str(tmp_path / "boot.yaml"))), ("", "''")):
        env = {"PATH": "/usr/bin:/bin", "SPROUT_BOOTSTRAP_CONFIG": value}
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr[-1000:]
        assert p.stdout.split() == [expected, "None"]
