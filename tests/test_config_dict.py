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
