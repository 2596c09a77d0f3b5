"""Study files: every shipped study validates; bad ones fail with one line naming the field."""

import subprocess
import sys
import textwrap

import pytest
import yaml
from helpers import ROOT, sweep

from orchestrator.study.load import list_studies, load_raw, parse, plan, study_dir
from orchestrator.study.space import DefineByRun, default_point, optuna_name


@pytest.mark.parametrize("name", sorted(list_studies()))
@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_study_validates(name, smoke):
    raw, src = load_raw(name=name)
    p = plan(parse(raw, src), src, smoke=smoke)
    assert p.stages and list_studies()[name]
    if smoke:
        assert all(s.base["dataset"] == "digits" and s.base["epochs"] <= 3 for s in p.stages)


def test_sensitivity_searches_the_four_parameters_around_the_paper_defaults():
    raw, src = load_raw(name="sensitivity")
    stage = plan(parse(raw, src), src).stages[0]
    specs = stage.search.param_specs("s")
    assert set(specs) == {"method_args.alpha", "method_args.mixup_a", "method_args.delta", "method_args.lr_beta"}
    defaults = {
        "method_args.alpha": 0.01,
        "method_args.mixup_a": 0.2,
        "method_args.delta": 0.1,
        "method_args.lr_beta": 0.01,
    }
    for key, value in defaults.items():
        assert specs[key].low <= value <= specs[key].high, key
    assert default_point(specs, stage.base) == defaults
    # the enqueued first point uses Optuna's flattened keys (nested keys are silently ignored)
    assert {optuna_name(k) for k in defaults} == {
        "method_args/alpha",
        "method_args/mixup_a",
        "method_args/delta",
        "method_args/lr_beta",
    }


class FakeTrial:
    def __init__(self, choice):
        self.choice = choice
        self.asked = []

    def suggest_categorical(self, name, values):
        self.asked.append(name)
        return self.choice

    def suggest_float(self, name, low, high, log=False):
        self.asked.append(name)
        return low


def test_conditional_parameters_are_only_suggested_when_their_condition_holds(tmp_path):
    raw = yaml.safe_load(
        textwrap.dedent("""
        name: cond
        base: {dataset: digits}
        search:
          algorithm: optuna
          params:
            method: {values: [sprout, trades]}
            method_args.beta: {type: float, low: 1.0, high: 10.0, when: {method: trades}}
    """)
    )
    stage = plan(parse(raw, "cond.yaml"), "cond.yaml").stages[0]
    space = DefineByRun(stage.search.param_specs("s"), stage.base)
    for choice, expected in (("sprout", ["method"]), ("trades", ["method", "method_args/beta"])):
        t = FakeTrial(choice)
        space(t)
        assert t.asked == expected


def test_a_stage_reference_resolves_to_the_matching_completed_trial_of_its_stage():
    """``stage:NAME/k=v`` names the checkpoint of the trial of stage NAME whose config matches,
    among several (the init study starts SPROUT from each of its first stage's models); a failed
    trial or another stage's never; no match is one clear error before the stage runs."""
    from orchestrator.study import resolve_refs_for
    from orchestrator.study.refs import ref_target
    from trainables.errors import ConfigError

    def row(stage, method, status="completed", lr=0.1):
        return {
            "stage": stage,
            "status": status,
            "checkpoint": f"/ck/{stage}-{method}-{lr}-{status}",
            "config": {"method": method, "optim": {"lr": lr}},
        }

    rows = [
        row("other", "pgd_at"),
        row("pretrain", "pgd_at", status="failed"),
        row("pretrain", "natural"),
        row("pretrain", "pgd_at", lr=0.01),
        row("pretrain", "pgd_at"),
    ]
    assert ref_target("stage:pretrain/method=natural", rows) == "/ck/pretrain-natural-0.1-completed/checkpoint.pt"
    assert ref_target("stage:pretrain/method=pgd_at", rows) == "/ck/pretrain-pgd_at-0.01-completed/checkpoint.pt"
    assert (
        ref_target("stage:pretrain/method=pgd_at,optim.lr=0.1", rows)
        == "/ck/pretrain-pgd_at-0.1-completed/checkpoint.pt"
    )
    assert ref_target("stage:pretrain/method=trades", rows) is None
    raw, src = load_raw(name="init")
    sprout = plan(parse(raw, src), src).stages[1]
    with pytest.raises(ConfigError, match="'stage:pretrain/method=trades' matches no completed trial"):
        resolve_refs_for(sprout, rows, {})
    rows.append(row("pretrain", "trades"))
    refs = resolve_refs_for(sprout, rows, {})
    assert refs == {
        f"stage:pretrain/method={m}": f"/ck/pretrain-{m}-{0.01 if m == 'pgd_at' else 0.1}-completed/checkpoint.pt"
        for m in ("natural", "pgd_at", "trades")
    }


def test_unknown_study_lists_the_valid_ones(tmp_path):
    p = sweep("--study", "widthh", cwd=tmp_path, timeout=120, expect=2)
    assert "unknown study 'widthh'; expected one of:" in p.stderr and "sensitivity" in p.stderr


def test_list_prints_every_study_from_a_copy_of_the_script(tmp_path):
    # ray submit copies sweep.py alone: it must find the studies through the installed package
    copy = tmp_path / "sweep.py"
    copy.write_text((ROOT / "orchestrator" / "sweep.py").read_text())
    p = subprocess.run([sys.executable, str(copy), "--list"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    for name in list_studies():
        assert name in p.stdout
    assert study_dir().name == "search_spaces"


PROBE = textwrap.dedent("""
    import runpy, sys
    target, args = sys.argv[1], sys.argv[2:]
    sys.argv = [target, *args]
    try:
        if target.endswith(".py"):
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    print("HEAVY", sorted(m for m in ("torch", "ray") if m in sys.modules))
""")


@pytest.mark.parametrize(
    "argv", [["orchestrator/sweep.py", "--help"], ["orchestrator/sweep.py", "--list"], ["trainables.train", "--help"]]
)
def test_help_and_list_answer_without_loading_torch_or_ray(argv):
    """Help and listings import neither torch nor Ray, so they answer at once."""
    p = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "HEAVY []" in p.stdout, p.stdout[-500:]


def test_the_command_lines_data_settings_survive_the_smoke_cut():
    """--smoke-test moves a study to digits and drops the file's data settings; a --set on the
    command line is applied after that cut, so what the user set is what runs."""
    from orchestrator.study.load import load_raw, parse, plan

    raw, src = load_raw(name="sensitivity")
    study = parse(raw, src)
    (stage,) = plan(study, src, smoke=True, overrides={"base": {"data": {"val_size": 100}}}).stages
    assert stage.base["dataset"] == "digits" and stage.base["data"]["val_size"] == 100
    (plain,) = plan(study, src, smoke=True).stages
    assert plain.base.get("data", {}).get("val_size") != 100


def test_a_smoke_tests_trial_count_is_optunas_and_leaves_the_grids_alone():
    """smoke.num_samples cuts an Optuna stage; the grid stage before it (one natural model) is not
    repeated that many times over."""
    raw, src = load_raw(name="sensitivity-cifar10")
    natural, main = plan(parse(raw, src), src, smoke=True).stages
    assert natural.search.num_samples == 1 and main.search.num_samples == 3
