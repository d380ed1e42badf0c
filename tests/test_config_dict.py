from dataclasses import dataclass

import pytest

from dpo_diff.bench.config import BenchError
from dpo_diff.config_dict import from_known_keys
from dpo_diff.optimize import OptimizeConfig


@dataclass
class _Cfg:
    a: int
    b: str = "x"


def test_rebuilds_a_dataclass_and_names_unknown_and_known_keys():
    assert from_known_keys(_Cfg, {"a": 1}) == _Cfg(1, "x")
    with pytest.raises(BenchError, match=r"unknown bench config keys \['c'\]; known: \['a', 'b'\]"):
        from_known_keys(_Cfg, {"a": 1, "c": 2}, what="bench config", error=BenchError)


def test_optimize_config_round_trips_and_refuses_a_typo():
    cfg = OptimizeConfig(prompt="a red circle", task="improve", model="m", judge="j")
    back = OptimizeConfig.from_dict(cfg.to_dict())
    assert back.to_dict() == cfg.to_dict() and type(back.gpo) is type(cfg.gpo)
    with pytest.raises(ValueError, match="budjet"):
        OptimizeConfig.from_dict({**cfg.to_dict(), "budjet": 3})


@pytest.mark.parametrize("key, value, message", [
    ("budget", "x", 'config: budget: expected a number, got "x"'),
    ("seeds", ["1"], 'config: seeds[0]: expected an integer, got "1"'),
    ("steps", 1.5, "config: steps: expected an integer, got 1.5"),
    ("gpo", {"lr": "x"}, 'config: gpo.lr: expected a number, got "x"'),
    ("gpo", 5, "config: gpo: expected an object, got 5"),
    ("model", None, "config: model: expected a string, got null"),
])
def test_values_of_the_wrong_type_are_refused_naming_the_key(key, value, message):
    cfg = OptimizeConfig(prompt="a red circle", task="improve", model="m", judge="j").to_dict()
    with pytest.raises(ValueError) as e:
        OptimizeConfig.from_dict({**cfg, key: value})
    assert str(e.value) == message


def test_a_config_that_is_not_an_object_is_refused():
    with pytest.raises(BenchError, match=r"^bench config: expected an object, got \[1\]$"):
        from_known_keys(_Cfg, [1], what="bench config", error=BenchError)
