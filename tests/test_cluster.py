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
    assert config["file_mounts"] and any("pip install -e" in c for c in config["setup_commands"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_services_bind_to_localhost_and_no_credentials(path):
    text = path.read_text()
    cmds = " ".join(yaml.safe_load(text)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in cmds
    assert "mlflow server" in cmds and "--host 127.0.0.1" in cmds and "0.0.0.0" not in text
    assert "sweep_driver" in cmds  # per-trial drivers do not take GPU-node CPUs
    lowered = text.lower()
    for secret in ("aws_secret_access_key", "aws_access_key_id", "password", "token:"):
        assert secret not in lowered


def test_invalid_cluster_file_is_refused():
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = yaml.safe_load(FILES[0].read_text())
    bad["available_node_types"]["head"]["min_workerz"] = 1
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))
