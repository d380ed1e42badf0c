"""benchmarks/seed_transfer.py's metrics: a proxy that is the held-out loss itself must rank perfectly and gain the
most; an uninformative proxy gains nothing; a cheaper proxy looks at more candidates at equal spend."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmarks/seed_transfer.py")


def _record(task: str, n: int = 40, noise: float = 0.0, seed: int = 0) -> dict:
    """A synthetic record: the held-out loss is a per-candidate quality plus seed noise; previews see the quality
    through ``noise``; faithfulness is high exactly where the loss is low."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=n)
    held = quality[:, None] + 0.01 * rng.normal(size=(n, 8))
    look = quality[:, None] + noise * rng.normal(size=(n, 4))
    good = (quality < np.median(quality)).astype(float)
    return {"task": task, "full": look[:, :2].tolist(), "steps:10%": look.tolist(), "steps:20%": look.tolist(),
            "heldout": held.tolist(), "heldout_faithful": (good if task == "improve" else 1 - good).tolist(),
            "cost_per_seed": {"full": 1.0, "steps:10%": 0.1, "steps:20%": 0.2}}


def test_a_perfect_proxy_ranks_like_the_held_out_loss_and_gains(bench):
    metrics = bench.prompt_metrics(_record("improve"))
    assert metrics["ceiling"]["rho"] > 0.99
    assert metrics["full@1"]["rho"] > 0.99
    assert metrics["full@1"]["gain@2"] > 0.3  # the better of two candidates beats a random one
    assert metrics["full@1"]["gain@6"] > metrics["full@1"]["gain@2"]  # more looks, more gain
    assert metrics["steps:20%@1"]["gain@2"] > metrics["full@1"]["gain@2"]  # 10 looks for the price of 2
    assert metrics["full@1"]["faith@6"] > 20  # picks the faithful half: up for improve


def test_attack_counts_broken_faithfulness_as_gain(bench):
    metrics = bench.prompt_metrics(_record("attack"))
    assert metrics["full@1"]["faith@6"] > 20  # the pick is *less* faithful than a random candidate


def test_an_uninformative_proxy_gains_about_nothing(bench):
    noisy = [bench.prompt_metrics(_record("improve", noise=1e3, seed=s))["steps:10%@1"] for s in range(5)]
    exact = [bench.prompt_metrics(_record("improve", seed=s))["steps:10%@1"] for s in range(5)]
    assert abs(np.mean([m["rho"] for m in noisy])) < 0.2
    assert np.mean([m["gain@2"] for m in exact]) > 1.5  # the best of 20 standard normals, about 1.9 below the mean
    assert abs(np.mean([m["gain@2"] for m in noisy])) < 0.6


def test_spends_the_recorded_candidates_cannot_cover_are_left_out(bench):
    metrics = bench.prompt_metrics(_record("improve", n=30))
    assert np.isnan(metrics["steps:10%@1"]["gain@4"])  # 40 looks, 30 recorded
    table = bench.summarize([_record("improve", n=30), _record("improve", n=30, seed=1)])
    assert "| improve | steps:10%@1 | 0.10 | 2 |" in table
    assert "| - |" in table


def test_every_seed_count_recorded_is_a_proxy(bench):
    names = set(bench.proxies(_record("improve")))
    assert {"steps:10%@4", "steps:20%@4", "full@2"} <= names and "full@4" not in names
