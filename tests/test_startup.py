"""What a trial starts: Ray Train's trainer without its Ray Data callback when no Ray Data
dataset is passed (a private Ray API, wrapped in one place: this test fails when Ray changes it),
and the start-up trace the benchmark reads."""

import json

from orchestrator.tuner.driver import lean_trainer_class


def callback_types(trainer) -> set[str]:
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


def test_the_lean_trainer_drops_only_the_ray_data_callback_and_only_without_datasets():
    from ray.train.torch import TorchTrainer

    def loop(config):
        return None

    plain = callback_types(TorchTrainer(loop))
    assert "DatasetsCallback" in plain and "PlacementGroupCleanerCallback" in plain  # what Ray has today
    lean = callback_types(lean_trainer_class()(loop))
    assert lean == plain - {"DatasetsCallback"}  # the placement-group cleaner stays (ASHA needs it)


def test_the_startup_trace_is_written_only_when_asked(tmp_path, monkeypatch):
    from orchestrator.tuner.trace import HEAVY, TRACE_ENV, stamp

    monkeypatch.delenv(TRACE_ENV, raising=False)
    stamp("driver")  # nothing to write to: nothing happens
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    stamp("driver", "t1")
    stamp("built", "t1")
    rows = [json.loads(x) for x in trace.read_text().splitlines()]
    assert [r["what"] for r in rows] == ["driver", "built"] and rows[1]["t"] >= rows[0]["t"] and rows[0]["cpu_s"] > 0
    assert "torch" in rows[0]["loaded"] and set(rows[0]["loaded"]) <= set(HEAVY)  # this test process has torch
