"""Study files: every shipped study validates; bad ones fail with one line naming the field."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from orchestrator.study import (DefineByRun, list_studies, load_raw, optuna_key, parse, plan, default_point,
                                study_dir)
from trainables.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


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
    defaults = {"method_args.alpha": 0.01, "method_args.mixup_a": 0.2, "method_args.delta": 0.1, "method_args.lr_beta": 0.01}
    for key, value in defaults.items():
        assert specs[key].low <= value <= specs[key].high, key
    # the enqueued first point uses Optuna's flattened keys (nested keys are silently ignored)
    assert default_point(specs, stage.base) == {optuna_key(k): v for k, v in defaults.items()}


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
    raw = yaml.safe_load(textwrap.dedent("""
        name: cond
        base: {dataset: digits}
        search:
          algorithm: optuna
          params:
            method: {values: [sprout, trades]}
            method_args.beta: {type: float, low: 1.0, high: 10.0, when: {method: trades}}
    """))
    stage = plan(parse(raw, "cond.yaml"), "cond.yaml").stages[0]
    space = DefineByRun(stage.search.param_specs("s"), stage.base)
    for choice, expected in (("sprout", ["method"]), ("trades", ["method", "method_args/beta"])):
        t = FakeTrial(choice)
        space(t)
        assert t.asked == expected


BAD = {
    "malformed YAML": ("search: [unclosed", "malformed YAML at line 1"),
    "unknown top-level key": ("name: x\nbudget: 3\n", "unknown key 'budget'"),
    "unknown search key": ("search: {algorithmm: grid}\n", "search: unknown key 'algorithmm'"),
    "wrong type": ("search: {num_samples: many}\n", "search.num_samples: expected an integer"),
    "alpha outside [0, 1]": ("base: {method: sprout}\nsearch: {algorithm: optuna, params: {method_args.alpha: {type: float, low: 0.0, high: 1.5}}}\n",
                             "search.params.method_args.alpha: value 1.5 is invalid: method_args.alpha: expected a number in [0, 1]"),
    "negative Delta": ("base: {method: sprout, method_args: {delta: -0.1}}\n", "method_args.delta: expected a number >= 0"),
    "negative gamma_beta": ("base: {method: sprout}\nsearch: {algorithm: optuna, params: {method_args.lr_beta: {type: float, low: -1.0, high: 0.1}}}\n",
                            "method_args.lr_beta: expected a number >= 0"),
    "zero epochs": ("base: {epochs: 0}\n", "epochs: expected an integer >= 1"),
    "unknown method": ("base: {method: madry}\n", "unknown method 'madry'"),
    "unknown model": ("base: {model: resnet9}\n", "unknown model 'resnet9'"),
    "unknown data set": ("base: {dataset: svhn}\n", "unknown data set 'svhn'"),
    "missing data root": ("base: {dataset: imagenet, data: {root: /nonexistent/imagenet}}\n", "/nonexistent/imagenet/train: missing"),
    "range in a grid": ("search: {algorithm: grid, params: {seed: {type: int, low: 0, high: 3}}}\n", "a grid study lists values"),
    "unknown protocol": ("evaluation: {protocol: strongest}\n", "evaluation.protocol: expected one of"),
    "bad resources": ("resources: {num_workers: 0}\n", "resources.num_workers: expected an integer >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_files_are_one_clear_line_before_ray_starts(case, tmp_path):
    text, message = BAD[case]
    f = tmp_path / "study.yaml"
    f.write_text(text)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(ROOT / "orchestrator" / "sweep.py"), "--config", str(f), "--output-dir", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written, Ray never started


def test_unknown_study_lists_the_valid_ones(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "orchestrator" / "sweep.py"), "--study", "widthh"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "unknown study 'widthh'; expected one of:" in p.stderr and "sensitivity" in p.stderr


def test_list_prints_every_study_from_a_copy_of_the_script(tmp_path):
    # ray submit copies sweep.py alone: it must find the studies through the installed package
    copy = tmp_path / "sweep.py"
    copy.write_text((ROOT / "orchestrator" / "sweep.py").read_text())
    p = subprocess.run([sys.executable, str(copy), "--list"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    for name in list_studies():
        assert name in p.stdout
    assert study_dir().name == "search_spaces"
