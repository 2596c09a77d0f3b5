"""--dry-run: every study's plan (every trial's full config, protocols, certification plan) and
its estimate, printed without Ray and without writing anything."""

import json

import pytest
from helpers import ROOT

from orchestrator.study.load import list_studies
from orchestrator.sweep import main


def dry_run(capsys, *args) -> dict:
    assert main(["--dry-run", "--json", "--skip-data-check", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(list_studies()))
def test_every_study_has_a_plan_of_full_configs_and_an_estimate(name, capsys, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("the dry run started Ray"))
    plan = dry_run(capsys, "--study", name)
    assert plan["study"] == name and plan["stages"] and not list(tmp_path.iterdir())  # nothing written
    for stage in plan["stages"]:
        assert stage["name"] and stage["trials"]
        for t in stage["trials"]:
            cfg = t["config"]  # what summary.json records for the trial: every key resolved
            assert {"method", "model", "dataset", "epochs", "eps", "batch_size", "optim", "method_args"} <= set(cfg)
            assert isinstance(cfg["epochs"], int) and cfg["optim"]["lr"] > 0
            trains = ("fp32", "bf16")
            assert t["precision"] in (("-",) if t.get("evaluated") else trains)  # an evaluation trains nothing
        cert = stage["certify"]
        assert cert["finalists"] >= 1 and cert["shards"] >= cert["finalists"] and cert["budgets"]
    est = plan["estimate"]
    dev = est["device"].lower()
    assert est[f"total_{dev}_hours"] > 0 and est["wall_hours"] > 0
    assert set(est["sources"]) == {"pass", "step_ratios", "autoattack", "trial_startup"}


def test_the_width_plan_is_the_grid_a_reviewer_checks_against_figure_3(capsys):
    plan = dry_run(capsys, "--study", "width", "--cluster-config", str(ROOT / "cluster" / "gpu.yaml"))
    natural, main_stage = plan["stages"]
    widths = (1, 2, 4, 6, 8, 10)
    assert [t["config"]["model_args"]["width"] for t in natural["trials"]] == list(widths)
    arms = {(t["searched"]["case"], t["config"]["model_args"]["width"]): t for t in main_stage["trials"]}
    assert set(arms) == {(a, w) for a in ("sprout", "sprout-paper", "pgd_at") for w in widths}
    for w in widths:  # SPROUT starts from the natural model of its own width, in the released code's variant
        t = arms[("sprout", w)]
        assert t["config"]["init_checkpoint"] == f"stage:natural/model_args.width={w},seed=0"
        assert t["config"]["method_args"]["variant"] == "reference" and t["precision"] == "fp32"
        assert arms[("pgd_at", w)]["config"]["init_checkpoint"] is None
    assert all(t["config"]["dataset"] == "cifar10" and t["config"]["eps"] == 0.03 for t in main_stage["trials"])
    assert main_stage["certify"]["test_images"] == 10_000 and main_stage["certify"]["protocol"] == "standard"
    est = plan["estimate"]
    assert est["device"] == "GPU" and est["concurrency"] == 8  # gpu.yaml grows to 8 one-GPU workers
    # wider networks cost more: a width-10 trial costs more than a width-1 one of the same arm
    cost = {k: t["estimate_hours"]["train"] for k, t in arms.items()}
    assert cost[("sprout", 10)] > 20 * cost[("sprout", 1)] and cost[("pgd_at", 10)] > cost[("sprout-paper", 10)]
    # every difference from the paper's setting is one the study declares
    assert plan["settings"]["findings"] and all(f["deviation"] for f in plan["settings"]["findings"])


def test_an_optuna_plan_shows_the_enqueued_defaults_then_the_ranges(capsys):
    plan = dry_run(capsys)  # the main job
    (stage,) = plan["stages"]
    first, *rest = stage["trials"]
    assert first["searched"] == {
        "method_args.alpha": 0.01,
        "method_args.mixup_a": 0.2,
        "method_args.delta": 0.1,
        "method_args.lr_beta": 0.01,
    }
    assert first["config"]["method_args"]["alpha"] == 0.01
    assert rest and all(t["chosen_by"] == "optuna" and t["searched"]["method_args.alpha"]["log"] for t in rest)
    assert stage["certify"]["finalists"] == 4 and stage["certify"]["shards"] == 16  # top 3 + defaults, 200 in 50s


def test_the_table_names_each_figures_measurement(capsys):
    assert main(["--dry-run", "--study", "scalability"]) == 0
    out = capsys.readouterr().out
    assert "stage main: 32 trial(s), grid" in out  # 8 methods x 2 models x fp32 and bf16
    assert "differs on purpose, precision" in out  # the bf16 column, declared
    assert "pass: ASSUMED" in out or "pass: measured" in out
    assert "step_ratios: measured: step_cost-" in out and "autoattack: measured: eval_cost-cpu.json" in out


def test_the_estimates_trial_start_up_is_the_sweeps_measurement(tmp_path):
    """A trial's start-up in the estimate is the one measured through the sweep (Tune creating the
    trial to its first step); a results file from before that figure existed gives the trainer's."""
    from orchestrator.estimate import load_basis

    orch = tmp_path / "orchestration-cpu.json"
    orch.write_text(json.dumps({"trial_startup_s": 10.7, "trial_startup_wall_s": 6.2}))
    basis = load_basis(False, tmp_path)
    assert basis.startup_s == 6.2 and "trial_startup_wall_s" in basis.startup_from
    orch.write_text(json.dumps({"trial_startup_s": 10.7}))
    assert load_basis(False, tmp_path).startup_s == 10.7
