"""A study whose storage is an S3 bucket, served on loopback by moto's standalone server (as Ray's
own tests do): checkpoints, certification shards and their results land in the bucket and
nothing under a local storage path; an evaluation stage loads an earlier stage's checkpoint from
the bucket; a driver killed mid-certification resumes from the bucket; a bucket that does not
exist, or credentials the server refuses, are one line before anything runs."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from helpers import SWEEP, sweep, wait_for

pytestmark = pytest.mark.slow

BUCKET = "sprout-studies"  # a fresh one per test: moto keeps its buckets per process, across servers
STUDY = """
    name: s3
    base: {method: natural, dataset: digits, epochs: 2, monitor: {every: 0}}
    stages:
      - name: main
        search: {algorithm: grid, params: {seed: {values: [0, 1]}}}
        evaluation: {protocol: basic, overrides: {batch_size: 30}}
        certify: {shard_size: 30}
      - name: again
        checkpoints: [{name: seed0, checkpoint: "stage:main/seed=0"}]
        evaluation: {protocol: basic, overrides: {batch_size: 30}}
        certify: {shard_size: 60}
    resources: {max_concurrent_trials: 1}
"""


@pytest.fixture
def s3(monkeypatch):
    """An S3 server on 127.0.0.1 with one bucket; dummy credentials in the environment, which the
    sweep, its Ray and every worker inherit. Yields (storage URI base, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    try:
        yield f"?region=us-east-1&endpoint_override={endpoint}&scheme=http", client, bucket
    finally:
        server.stop()


def keys(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


def test_a_bucket_that_does_not_exist_is_refused_before_anything_runs(s3, tmp_path):
    query, client, bucket = s3
    out = tmp_path / "out"
    p = sweep("--smoke-test", "--output-dir", str(out), "--storage-path", f"s3://no-such-bucket/x{query}",
              cwd=tmp_path, expect=2)  # fmt: skip
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: --storage-path s3://no-such-bucket/x") and "bucket does not exist" in line
    assert not out.exists() and keys(client, bucket) == []
    # the same from the cluster file's environment, which it names
    env_p = sweep("--smoke-test", "--output-dir", str(out), cwd=tmp_path, expect=2,
                  env={**os.environ, "SPROUT_STORAGE_PATH": f"s3://no-such-bucket/x{query}"})  # fmt: skip
    assert env_p.stderr.startswith("error: SPROUT_STORAGE_PATH (set in the cluster file's head environment")


def test_credentials_the_server_refuses_are_one_line_before_anything_runs(tmp_path):
    """An S3 server that checks credentials (moto's server with IAM authentication on after the
    four set-up requests): a bucket that exists, keys it does not know, one line naming the
    storage and the server's refusal, exit 2, nothing written; the user's own keys can write."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        boot = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "boot",
                "aws_secret_access_key": "boot"}  # fmt: skip
        bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", **boot).create_bucket(Bucket=bucket)  # the 4 requests before auth is on
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="researcher")
        iam.put_user_policy(UserName="researcher", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))  # fmt: skip
        key = iam.create_access_key(UserName="researcher")["AccessKey"]
        own = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                           aws_secret_access_key=key["SecretAccessKey"])  # fmt: skip
        storage = f"s3://{bucket}/studies?region=us-east-1&endpoint_override={endpoint}&scheme=http"
        out = tmp_path / "out"
        wrong = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "wrong"}
        p = sweep(
            "--smoke-test", "--output-dir", str(out), "--storage-path", storage, cwd=tmp_path, expect=2, env=wrong
        )
        (line,) = p.stderr.strip().splitlines()
        assert line.startswith(f"error: --storage-path s3://{bucket}/studies") and "INVALID_ACCESS_KEY_ID" in line
        assert "does not exist in our records" in line and "Request ID" not in line
        assert not out.exists() and own.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        # the same storage with keys the server knows passes the check (the probe writes and removes its file)
        from orchestrator.cluster.storage import probe_storage

        env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            probe_storage(storage, "--storage-path")
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        assert keys(own, bucket) == ["studies/"]  # the probe's file is gone; pyarrow keeps the folder's marker
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_study_on_s3_keeps_everything_in_the_bucket_and_resumes_from_it(s3, tmp_path):
    from trainables.evaluation import evaluate, get_protocol
    from trainables.files import join_uri
    from trainables.loading import load_model_from_checkpoint

    query, client, bucket = s3
    study = tmp_path / "s3.yaml"
    study.write_text(textwrap.dedent(STUDY))
    out, log = tmp_path / "out", tmp_path / "log1.txt"
    storage = f"s3://{bucket}/studies{query}"
    args = ["--config", str(study), "--output-dir", str(out), "--storage-path", storage]
    proc = subprocess.Popen([sys.executable, str(SWEEP), *args], cwd=tmp_path, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for(log, "[main] certify: 1/24 shards", proc)  # 2 finalists x 360 test images / 30
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, mid-certification
        proc.wait()
    first = set(keys(client, bucket))
    assert any(k.startswith("studies/s3-certify/main/") and k.endswith(".json") for k in first)
    p = sweep(*args, "--resume", cwd=tmp_path)
    earlier = int(p.stdout.split("certify: ")[1].split(" of 24 shards finished in an earlier launch")[0])
    assert 1 <= earlier < 24
    rows = {(t["stage"], t["trial_id"]): t for t in json.loads((out / "summary.json").read_text())["trials"]}
    assert not (out / "ray").exists()  # nothing under a local storage path
    stored = keys(client, bucket)
    for (stage, trial_id), t in rows.items():
        assert t["certified"] and t["metrics"]["test/n_eval"] == 360
        assert any(k == f"studies/s3-certify/{stage}/{trial_id}/certification.json" for k in stored)
        if stage == "main":
            assert t["checkpoint"].startswith(f"s3://{bucket}/studies/train-") and t["checkpoint"].endswith(query)
            # the union of two launches' shards, read from the bucket, equals one evaluation
            model, cfg, bundle = load_model_from_checkpoint(join_uri(t["checkpoint"], "checkpoint.pt"))
            whole = evaluate(model, bundle, get_protocol("basic", {"batch_size": 30}), eps=cfg.eps, seed=0)
            for k in ("clean_acc", "pgd20_acc", "robust_acc_min"):
                assert t["metrics"][f"test/{k}"] == whole[k], k
    seed0 = next(t for (s, _), t in rows.items() if s == "main" and t["config"]["seed"] == 0)
    again = rows[("again", "seed0")]  # an evaluation stage read the checkpoint from the bucket
    assert again["config"]["init_checkpoint"] == join_uri(seed0["checkpoint"], "checkpoint.pt")
    assert again["metrics"]["test/clean_acc"] == seed0["metrics"]["test/clean_acc"]
    assert sum(k.startswith("studies/train-") and k.endswith("checkpoint.pt") for k in stored) >= 2
    assert not any(k.endswith(".sprout-storage-probe") for k in stored)  # the storage check left nothing
