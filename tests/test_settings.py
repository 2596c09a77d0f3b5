"""The paper's settings as data: every reproduction study's full (not smoke) plan is compared with
its settings file cell by cell; a difference is either declared in the study file, with its
reason, or a failure. Bad settings files and deviations are one clear line."""

import pytest

from orchestrator.dryrun import settings_report, stage_plan
from orchestrator.study import load_paper_settings, load_raw, parse, plan
from orchestrator.study.load import list_studies
from trainables.errors import ConfigError

DEMOS = {"sensitivity"}  # the digits demo of the main job reproduces no paper setting


def full_plan(name):
    raw, src = load_raw(name=name)
    return plan(parse(raw, src), src)


def report_of(p):
    gpu = p.resources.gpus_per_worker > 0
    stages = [stage_plan(s, p.resources, gpu) for s in p.stages]
    for s in stages:
        s.pop("_protocols")
    return settings_report(p, stages)


@pytest.mark.parametrize("name", sorted(set(list_studies()) - DEMOS))
def test_every_reproduction_runs_the_papers_setting_or_says_why_not(name):
    p = full_plan(name)
    assert p.study.settings, f"{name}: reproduces a paper artefact but names no settings file"
    report = report_of(p)
    assert report["cells"] >= 5
    undeclared = [f for f in report["findings"] if not f["deviation"]]
    assert not undeclared, undeclared[:3]
    stale = [f for f in report["findings"] if f.get("stale")]
    assert not stale, stale  # a deviation no trial needs is not one


def test_every_cell_names_its_source_or_why_the_paper_is_silent():
    for name in sorted(set(list_studies()) - DEMOS):
        settings = load_paper_settings(full_plan(name).study.settings)
        for cell in settings["cells"]:
            said = cell.get("source") or cell.get("unspecified")
            assert said and len(said) >= 8, (name, cell)


def test_a_study_that_leaves_the_papers_setting_without_a_reason_is_caught(tmp_path, monkeypatch):
    """The check can fail: the width study with SPROUT's released-code arm switched to Algorithm 1."""
    from dataclasses import replace

    p = full_plan("width")
    main = p.stages[1]
    cases = tuple({**c, "method_args": {"variant": "paper"}} if c["name"] == "sprout" else c for c in main.search.cases)
    p = replace(p, stages=(p.stages[0], replace(main, search=replace(main.search, cases=cases))))
    found = [f for f in report_of(p)["findings"] if not f["deviation"]]
    assert {f["key"] for f in found} == {"method_args.variant"} and len(found) == 6  # one per width
    assert found[0]["paper"] == "reference" and found[0]["study"] == "paper"


def test_settings_files_and_deviations_that_say_nothing_are_refused(tmp_path, monkeypatch):
    from orchestrator.study import paper

    monkeypatch.setattr(paper, "SETTINGS_DIR", tmp_path)
    (tmp_path / "nokey.yaml").write_text(
        "source: x\ncells:\n  - {key: learning_rate, value: 1, source: 'Table 1 says so'}\n"
    )
    (tmp_path / "silent.yaml").write_text("source: x\ncells:\n  - {key: epochs, value: 1}\n")
    (tmp_path / "where.yaml").write_text(
        "source: x\ncells:\n  - {key: epochs, value: 1, where: {gpu: 1}, source: 'Table 1'}\n"
    )
    with pytest.raises(ConfigError, match=r"cells\[0\]\.key: 'learning_rate' names no setting"):
        paper.load_paper_settings("nokey")
    with pytest.raises(ConfigError, match=r"cells\[0\]: expected source .* or unspecified"):
        paper.load_paper_settings("silent")
    with pytest.raises(ConfigError, match=r"cells\[0\]\.where: 'gpu'"):
        paper.load_paper_settings("where")
    with pytest.raises(ConfigError, match="unknown paper-settings file 'nosuch'"):
        paper.load_paper_settings("nosuch")
