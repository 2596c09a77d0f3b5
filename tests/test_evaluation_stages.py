"""Evaluation as a study: checkpoints certified in shards as Ray tasks with nothing trained
(``--certify`` of published weights on CIFAR-format files, the attack-strength study), and an
ImageNet-format folder through Ray Train, screening and sharded certification."""

import json
import textwrap

import pytest
import torch
from helpers import mlflow_client, sweep, write_cifar10, write_image_folder
from test_published import SourceWRN, randomized

pytestmark = pytest.mark.slow

# the fields of RobustBench's model_info/<dataset>/<threat>/<Name>.json (its Wong2020Fast.json;
# Zhang2019Theoretically.json adds the optional footnote)
ROBUSTBENCH_FIELDS = {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                      "architecture", "eps", "clean_acc", "reported", "autoattack_acc"}  # fmt: skip


def test_certify_a_published_checkpoint_in_shards(tmp_path):
    """TRADES-format weights of a small WRN on CIFAR-10 files written here: certified with the
    quick protocol at smoke budgets, in two shards (Ray tasks); the sweep's clean accuracy is
    the loaded model's on the same images, and MLflow holds the checkpoint's run and its
    certification."""
    from trainables.data import get_dataset
    from trainables.published import load_published

    data = tmp_path / "cifar"
    write_cifar10(data, lambda y: y, n_test=120)
    weights = tmp_path / "model-wideres-epoch76.pt"
    torch.save(randomized(SourceWRN(10, 1), seed=7).state_dict(), weights)
    out = tmp_path / "out"
    proc = sweep(
        "--certify", f"trades_wrn:{weights}", "--model", "wrn", "--dataset", "cifar10", "--protocol", "quick",
        "--set", "model_args.depth=10", "--set", "model_args.width=1", "--set", f"data.root={data}",
        "--set", "data.download=false", "--smoke-test", "--export", "robustbench", "--output-dir", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    (row,) = json.loads((out / "summary.json").read_text())["trials"]
    assert row["trial_id"] == "model-wideres-epoch76" and row["status"] == "completed" and row["certified"]
    assert row["config"]["init_checkpoint"] == f"trades_wrn:{weights}" and row["selected_on"].startswith("evaluation")
    m = row["metrics"]
    assert m["test/shards"] == 2 and m["test/n_eval"] == 100 and "test/autoattack_acc" in m
    shards = sorted((out / "ray").rglob("shard_*.json"))
    assert len(shards) == 2, shards
    # the model the shards certified is the published one: its clean accuracy on the same images
    net = load_published(str(weights), "trades_wrn", "wrn", {"depth": 10, "width": 1})
    bundle = get_dataset("cifar10", root=str(data), download=False)
    with torch.no_grad():
        clean = (net(bundle.x_test[:100]).argmax(1) == bundle.y_test[:100]).float().mean().item()
    assert m["test/clean_acc"] == pytest.approx(clean, abs=1e-6)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("[main] certified model-wideres-epoch76: clean "))
    assert "AutoAttack" in line and "worst case" in line and line.count("[") >= 3, line  # three intervals
    # the claim in RobustBench's model_info format, with the fields its own files use
    (info_path,) = (out / "ray").rglob("robustbench_model_info.json")
    info = json.loads(info_path.read_text())
    assert set(info) == ROBUSTBENCH_FIELDS | {"footnote"}  # AutoAttack on 10 images: said, not claimed
    assert info["architecture"] == "WideResNet-10-1" and info["eps"] == "8/255" and info["dataset"] == "cifar10"
    assert (
        info["clean_acc"] == f"{100 * clean:.2f}" and info["autoattack_acc"] == f"{100 * m['test/autoattack_acc']:.2f}"
    )
    assert "AutoAttack (standard) on 10 of the 10000 test images" in info["footnote"]
    runs = {r.info.run_name: r for r in mlflow_client(out).search_runs([mlflow_client(out).get_experiment_by_name(
        "certify-model-wideres-epoch76").experiment_id])}  # fmt: skip
    assert runs["main-model-wideres-epoch76"].data.tags["kind"] == "checkpoint"
    assert runs["certify-main-model-wideres-epoch76"].data.metrics["test/clean_acc"] == pytest.approx(clean, abs=1e-6)


def test_attack_strength_study_at_smoke_budgets(tmp_path):
    """Three trained models, each certified again by three evaluation stages (restarts, steps,
    C&W-L-inf against eps) in shards; the report has the table and both figures."""
    out = tmp_path / "out"
    sweep("--study", "attack-strength", "--smoke-test", "--output-dir", str(out), cwd=tmp_path)
    trials = json.loads((out / "summary.json").read_text())["trials"]
    by_stage = {}
    for t in trials:
        by_stage.setdefault(t["stage"], {})[t["trial_id"]] = t
    for stage in ("restarts", "steps", "cw-eps"):
        assert sorted(by_stage[stage]) == ["pgd_at", "sprout", "trades"], stage
        assert all(t["certified"] for t in by_stage[stage].values())
    trained = {t["config"]["method"]: t for t in by_stage["models"].values()}
    for name, t in by_stage["restarts"].items():
        # the same model: its clean accuracy is the training stage's (same test images, no attack)
        assert t["metrics"]["test/clean_acc"] == trained[name]["metrics"]["test/clean_acc"]
        assert t["config"]["init_checkpoint"].endswith("checkpoint.pt")
        assert {"test/pgd20x2_acc", "test/pgd40x2_acc"} <= set(t["metrics"])
    assert all("test/curve_cw_linf_acc" in t["metrics"] for t in by_stage["cw-eps"].values())
    report = (out / "report.md").read_text()
    assert "## Random restarts (Table 9)" in report and "](attack_strength_steps.png)" in report
    assert (out / "attack_strength_cw.png").stat().st_size > 10_000


IMAGENET_STUDY = """
    name: folder
    base: {method: natural, dataset: imagenet, model: small_cnn, model_args: {width: 8}, epochs: 2, batch_size: 16,
           eps: 0.01, monitor: {n: 16, pgd_steps: 2}, data: {root: ROOT, image_size: 16, loader_workers: 0}}
    stages:
      - {name: train, evaluation: {protocol: basic}, certify: {shard_size: 10}}
      - name: again
        checkpoints: [{name: natural, checkpoint: "stage:train/method=natural"}]
        evaluation: {protocol: quick, overrides: {n: 24, autoattack.n: 8, cw_l2: false, curve: false, large_eps: false}}
        certify: {shard_size: 8}
"""


def test_an_imagenet_folder_through_train_screening_and_sharded_certification(tmp_path):
    root = write_image_folder(tmp_path / "imagenet")
    study = tmp_path / "folder.yaml"
    study.write_text(textwrap.dedent(IMAGENET_STUDY).replace("ROOT", str(root)))
    out = tmp_path / "out"
    sweep("--config", str(study), "--output-dir", str(out), cwd=tmp_path)
    trials = {t["stage"]: t for t in json.loads((out / "summary.json").read_text())["trials"]}
    train, again = trials["train"], trials["again"]
    assert train["status"] == "completed" and train["metrics"]["epoch"] == 2
    assert train["metrics"]["test/n_eval"] == 24 and train["metrics"]["test/shards"] == 3  # 24 val images, shards of 10
    assert again["metrics"]["test/shards"] == 3 and "test/autoattack_acc" in again["metrics"]
    assert again["metrics"]["test/clean_acc"] == train["metrics"]["test/clean_acc"]  # the same model, images
