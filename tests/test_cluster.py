"""Cluster launcher files: Ray's own validation (the path `ray up` takes), offline, and the
security rules (localhost bindings, no credentials)."""

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
FILES = sorted(CLUSTER.glob("*.yaml"))


def test_there_is_a_cloud_and_an_on_premises_file():
    providers = {yaml.safe_load(f.read_text())["provider"]["type"] for f in FILES}
    assert {"aws", "local"} <= providers


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cluster_file_passes_rays_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    assert config["file_mounts"]
    installs = [c for c in config["setup_commands"] if "pip install" in c and " -e " in c]
    assert installs and all("-c ~/sprout-orchestrator/cluster/constraints.txt" in c for c in installs)


def test_constraints_pin_every_dependency_the_cluster_installs():
    """The cluster installs exact versions (the ones the tests passed with), for every
    dependency the project declares."""
    import re

    import tomllib

    pins = {}
    for line in (CLUSTER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    deps = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", dep).group(0)).lower()
        assert name in pins, f"{name} is not pinned in cluster/constraints.txt"
    assert pins["torch"] != "2.13.0"  # the CPU-only file of that version breaks torchvision


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_services_bind_to_localhost_and_no_credentials(path):
    text = path.read_text()
    cmds = " ".join(yaml.safe_load(text)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in cmds
    assert "mlflow server" in cmds and "--host 127.0.0.1" in cmds and "0.0.0.0" not in text
    assert "sweep_driver" in cmds  # per-trial drivers do not take GPU-node CPUs
    lowered = text.lower()
    for secret in ("aws_secret_access_key", "aws_access_key_id", "password", "token:", "ray_auth_token="):
        assert secret not in lowered


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_node_runs_ray_with_token_authentication(path):
    """The token is generated locally (never in the repository), copied by `ray up`, and every
    `ray start` (head and workers) and the submitted sweep run with RAY_AUTH_MODE=token."""
    cfg = yaml.safe_load(path.read_text())
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert starts and all(c.strip().startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert any("head_bashrc.sh >> ~/.bashrc" in c for c in cfg["head_setup_commands"])
    assert "export RAY_AUTH_MODE=token" in (CLUSTER / "head_bashrc.sh").read_text()
    assert "auth_token" in (CLUSTER.parent / ".gitignore").read_text().split()  # never committed
    # the token is readable by its owner only, on every node (the mount keeps the client's mode)
    assert cfg["setup_commands"][0] == "chmod 600 ~/.ray/auth_token"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_nodes_get_the_project_sources_not_the_users_outputs(path):
    """`ray up` hashes every file under a mount: a project root holding runs/ (a finished
    sweep's Ray session), data/, a venv or checkpoints must not be mounted whole."""
    mounts = yaml.safe_load(path.read_text())["file_mounts"]
    project = {remote: local for remote, local in mounts.items() if remote.startswith("~/sprout-orchestrator")}
    assert "." not in project.values() and "./" not in project.values()
    root = CLUSTER.parent
    for remote, local in project.items():
        assert (root / local).exists(), local
        assert remote == "~/sprout-orchestrator/" + local.removeprefix("./")
    # what `pip install -e ~/sprout-orchestrator` needs: the build file, its readme, every package
    import tomllib

    meta = tomllib.loads((root / "pyproject.toml").read_text())
    needed = {
        "pyproject.toml",
        meta["project"]["readme"],
        *(p.rstrip("*") for p in meta["tool"]["setuptools"]["packages"]["find"]["include"]),
    }
    assert needed <= {local.removeprefix("./") for local in project.values()}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_up_returns_when_the_head_mlflow_server_answers_and_ray_down_stops_it(path):
    cmds = yaml.safe_load(path.read_text())["head_start_ray_commands"]
    server = next(i for i, c in enumerate(cmds) if "mlflow server" in c)
    assert "cluster/wait_for_mlflow.py" in cmds[server + 1] and "--timeout" in cmds[server + 1]
    stop = (CLUSTER / "head_bashrc.sh").read_text()
    assert "ray() {" in stop and 'pkill -f "mlflow server --backend-store-uri sqlite:///$HOME/mlflow/mlflow.db"' in stop
    assert "sqlite:///$HOME/mlflow/mlflow.db" in cmds[server]  # the server the function stops


def test_waiting_for_mlflow_fails_with_the_servers_log(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "server.log"
    log.write_text("starting\nOSError: [Errno 98] Address already in use\n")
    p = subprocess.run(
        [
            sys.executable,
            str(CLUSTER / "wait_for_mlflow.py"),
            "--url",
            "http://127.0.0.1:9",
            "--timeout",
            "1",
            "--log",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "did not answer within 1 s" in p.stderr and "Address already in use" in p.stderr


def test_invalid_cluster_file_is_refused():
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = yaml.safe_load(FILES[0].read_text())
    bad["available_node_types"]["head"]["min_workerz"] = 1
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))


def test_a_stopped_private_rays_session_is_tidied_down_to_plain_files(tmp_path):
    """Sockets, links and the address its processes found it by go; logs stay."""
    import socket

    from orchestrator.cluster import own_address_file, tidy_session

    root = tmp_path / "ray-tmp"
    logs = root / "session_1" / "logs"
    logs.mkdir(parents=True)
    (logs / "raylet.out").write_text("log")
    (root / "session_latest").symlink_to(root / "session_1")
    own_address_file(root).parent.mkdir()
    own_address_file(root).write_text("127.0.0.1:6379")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "session_1" / "sock"))
    s.close()
    assert tidy_session(tmp_path) == 3
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "ray",
        "session_1",
        "session_1/logs",
        "session_1/logs/raylet.out",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_study_storage_is_named_once_and_is_the_heads_default(path):
    """SPROUT_STORAGE_PATH is set in one place of each cluster file (the head's shell), an object
    store on AWS, a shared path on premises; MLflow's URI is the head's server."""
    import re

    cfg = yaml.safe_load(path.read_text())
    sets = re.findall(r"echo 'export SPROUT_STORAGE_PATH=(\S+?)'", path.read_text())
    assert len(sets) == 1, sets
    assert any("SPROUT_STORAGE_PATH" in c for c in cfg["head_setup_commands"])
    assert sets[0].startswith("s3://") == (cfg["provider"]["type"] == "aws")
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in (CLUSTER / "head_bashrc.sh").read_text()
    if cfg["provider"]["type"] == "aws":  # workers write to the bucket: the head's instance profile, named for them
        for name, node in cfg["available_node_types"].items():
            if name != cfg["head_node_type"]:
                assert node["node_config"]["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}, name


def test_the_storage_from_the_cluster_files_environment_is_the_default_and_named_in_errors(tmp_path, monkeypatch):
    from orchestrator.launch import prepare
    from orchestrator.sweep import parse_args
    from trainables.errors import ConfigError

    monkeypatch.setenv("SPROUT_BOOTSTRAP_CONFIG", "")
    monkeypatch.setenv("SPROUT_STORAGE_PATH", "ftp://bucket/sprout")
    argv = ["--smoke-test", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(
        ConfigError, match=r"^SPROUT_STORAGE_PATH \(set in the cluster file's head environment.*unknown scheme 'ftp'"
    ):
        prepare(parse_args(argv))
    # no storage anywhere, on a cluster that grows: the refusal says where to set it
    monkeypatch.delenv("SPROUT_STORAGE_PATH")
    with pytest.raises(ConfigError, match=r"^the default storage path .* as SPROUT_STORAGE_PATH in the cluster file"):
        prepare(parse_args([*argv, "--cluster-config", str(CLUSTER / "gpu.yaml")]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_node_checks_its_python_and_names_the_imagenet_mount_once(path):
    """Before the pinned install, each node's python3 is checked against the constraints'
    Python; ImageNet's root is set on every node (setup_commands), once."""
    import re

    text = path.read_text()
    cmds = yaml.safe_load(text)["setup_commands"]
    check = cmds.index("python3 ~/sprout-orchestrator/cluster/check_python.py")
    assert check < next(i for i, c in enumerate(cmds) if "pip install" in c)
    assert len(re.findall(r"echo 'export SPROUT_IMAGENET_ROOT=(/\S+)'", text)) == 1
    assert any("SPROUT_IMAGENET_ROOT" in c for c in cmds)


def test_the_python_check_names_the_nodes_python_and_the_one_the_constraints_need(tmp_path):
    import subprocess
    import sys

    sys.path.insert(0, str(CLUSTER))
    try:
        import check_python
    finally:
        sys.path.remove(str(CLUSTER))
    assert check_python.required() == (3, 11)
    assert check_python.check((3, 11)) is None
    assert check_python.check((3, 10)) == (
        "this node's python3 is 3.10; cluster/constraints.txt pins the packages the tests passed with on Python 3.11: "
        "give the node type an image with it (ImageId in the cluster file)"
    )
    other = tmp_path / "constraints.txt"
    other.write_text("# Python: 3.12\nnumpy==2.4.6\n")
    assert check_python.check((3, 11), other).startswith("this node's python3 is 3.11;")
    p = subprocess.run([sys.executable, str(CLUSTER / "check_python.py")], capture_output=True, text=True, timeout=60)
    assert (p.returncode == 0) == (sys.version_info[:2] == (3, 11)), p.stderr
