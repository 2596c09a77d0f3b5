from dataclasses import dataclass
from typing import Literal

import pytest

from trainables.config import resolve
from trainables.errors import ConfigError
from trainables.schema import build, parse_number, parse_override


def test_parse_number_fractions_and_errors():
    assert parse_number("8/255", "x") == pytest.approx(8 / 255)
    assert parse_number("0.03", "x") == 0.03
    with pytest.raises(ConfigError, match="x: expected a number"):
        parse_number("__import__('os')", "x")
    with pytest.raises(ConfigError):
        parse_number("1/0", "x")


@dataclass(frozen=True)
class _C:
    a: int = 1
    b: float = 0.5
    mode: Literal["x", "y"] = "x"
    flag: bool = False


def test_build_names_unknown_keys_and_wrong_types():
    assert build(_C, {"a": 3, "b": "8/255", "flag": "true"}, "c") == _C(3, 8 / 255, "x", True)
    with pytest.raises(ConfigError, match=r"c: unknown key 'z'"):
        build(_C, {"z": 1}, "c")
    with pytest.raises(ConfigError, match=r"c\.a: expected an integer"):
        build(_C, {"a": "three"}, "c")
    with pytest.raises(ConfigError, match=r"c\.mode: expected one of 'x', 'y'"):
        build(_C, {"mode": "z"}, "c")
    with pytest.raises(ConfigError, match=r"c\.flag: expected true or false"):
        build(_C, {"flag": 3}, "c")


def test_override_parsing():
    assert parse_override("method_args.alpha=0.05") == (["method_args", "alpha"], 0.05)
    assert parse_override("eps=8/255") == (["eps"], "8/255")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_resolve_fills_every_default_and_validates():
    cfg = resolve({"method": "sprout", "dataset": "digits"})
    assert cfg.model == "small_cnn" and cfg.epochs == 15 and cfg.eps == 0.1 and cfg.batch_size == 32
    assert cfg.method_args.variant == "paper" and cfg.method_args.alpha == 0.01
    assert cfg.method_args.theta_steps == 1 and cfg.method_args.beta_update == "joint"
    ref = resolve({"method": "sprout", "method_args": {"variant": "reference"}})
    assert ref.method_args.concentration == "additive" and ref.method_args.theta_steps == 3
    assert resolve({"method": "pgd_at", "dataset": "cifar10"}).optim.weight_decay == 2e-4
    with pytest.raises(ConfigError, match="unknown method 'nope'; expected one of: backward_smoothing"):
        resolve({"method": "nope"})
    with pytest.raises(ConfigError, match=r"method_args\.alpha: expected a number in \[0, 1\]"):
        resolve({"method": "sprout", "method_args": {"alpha": 1.5}})
    with pytest.raises(ConfigError, match=r"epochs: expected an integer >= 1"):
        resolve({"epochs": 0})
    with pytest.raises(ConfigError, match=r"model_args: unknown key 'depth'"):
        resolve({"model": "small_cnn", "model_args": {"depth": 3}})


def test_the_names_that_help_lists_are_the_registered_ones():
    """--help reads names from the source without importing torch; they must not drift."""
    from trainables.data import list_datasets
    from trainables.methods import list_methods
    from trainables.models import list_models
    from trainables.registry import declared

    assert declared("methods") == list_methods()
    assert declared("models") == list_models()
    assert declared("datasets") == list_datasets()
