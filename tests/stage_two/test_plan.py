"""Which fits a feature set gets: the layers chosen and the heads on them."""

from types import SimpleNamespace

import pytest

from wav2genre_cache.stage_two import plan
from wav2genre_cache.stage_two.plan import Job, plan_jobs


@pytest.mark.parametrize("feature_set, heads", [("handcrafted", ["svm"]), ("logmel", ["cnn"])])
def test_best_layer_of_a_one_layer_set_is_its_layer_without_a_probe(
    feature_set, heads, monkeypatch
):
    # The probe of a 40,064-wide log-mel set held a rows x rows gram (4.7 GB peak at 10,000
    # rows, benchmarks/heads_memory.py) to choose among one layer.
    def probe(data):
        raise AssertionError("the layer probe ran on a one-layer set")

    monkeypatch.setattr(plan, "probe_best_layer", probe)
    said: list[str] = []
    data = SimpleNamespace(feature_set=feature_set, n_layers=1)
    jobs, scores = plan_jobs(data, heads, "best", said.append)
    assert jobs == [Job(heads[0], 0)] and scores is None and said == []


def test_best_layer_of_an_encoder_set_is_the_probes(monkeypatch):
    monkeypatch.setattr(plan, "probe_best_layer", lambda data: (2, [0.1, 0.2, 0.3]))
    said: list[str] = []
    data = SimpleNamespace(feature_set="encoder", n_layers=3)
    jobs, scores = plan_jobs(data, ["logreg"], "best", said.append)
    assert jobs == [Job("logreg", 2)] and scores == [0.1, 0.2, 0.3]
    assert said == [
        "encoder layer probe (validation accuracy per layer): 0.10, 0.20, 0.30 -> layer 2"
    ]
