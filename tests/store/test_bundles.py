"""Bundles: where they are found, and bundle.json checked field by field before anything runs."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from wav2genre_cache.errors import BundleError
from wav2genre_cache.store.bundle_folders import resolve_bundle_dir


def test_a_run_folder_means_its_best_bundle(tmp_path):
    (tmp_path / "best").mkdir()
    assert resolve_bundle_dir(tmp_path) == tmp_path  # best/ holds no bundle yet
    (tmp_path / "best" / "bundle.json").write_text("{}")
    assert resolve_bundle_dir(tmp_path) == tmp_path / "best"
    assert resolve_bundle_dir(tmp_path / "best") == tmp_path / "best"
    assert resolve_bundle_dir(str(tmp_path / "bundles" / "svm")) == tmp_path / "bundles" / "svm"


def test_a_run_folder_where_only_finetune_ran_means_its_one_bundle(tmp_path):
    (tmp_path / "bundles" / "finetuned").mkdir(parents=True)
    (tmp_path / "bundles" / "finetuned" / "bundle.json").write_text("{}")
    assert resolve_bundle_dir(tmp_path) == tmp_path / "bundles" / "finetuned"
    (tmp_path / "bundles" / "svm").mkdir()
    (tmp_path / "bundles" / "svm" / "bundle.json").write_text("{}")
    assert resolve_bundle_dir(tmp_path) == tmp_path  # two: which one is for the user to say


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v0.1.0" / "run" / "bundles" / "logreg"


def edited(tmp_path: Path, **fields) -> Path:
    """A copy of a real bundle (random-tiny, logistic regression, 2 labels) with fields changed."""
    bundle = tmp_path / "bundle"
    shutil.copytree(FIXTURE, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps(meta | fields))
    return bundle


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"labels": ["only"]}, "'labels' lists 1 labels, but the head predicts 2"),
        ({"labels": "ab"}, "field 'labels' is 'ab', not a list"),
        ({"labels": ["a", "a"]}, "field 'labels' is not a list of distinct label names"),
        ({"layer": 99}, "layer 99, but random-tiny has layers 0.."),
        ({"layer": "2"}, "field 'layer' is '2', not a whole number"),
        ({"format_version": 99}, "bundle format version 99; this wav2genre-cache"),
        ({"segment_seconds": -1}, "field 'segment_seconds' is -1, not positive"),
        ({"backbone": "random-base"}, "the head reads 32 features, but random-base gives 768"),
    ],
)
def test_an_edited_bundle_json_is_refused_naming_the_field(tmp_path, fields, problem):
    from wav2genre_cache.inference.predict import Predictor

    with pytest.raises(BundleError) as error:
        Predictor(edited(tmp_path, **fields), device="cpu")
    assert problem in str(error.value) and "bundle.json" in str(error.value)


def test_predict_says_it_in_one_line(tmp_path):
    refused = run_cli("predict", str(FIXTURE / "bundle.json"), "--bundle",
                      str(edited(tmp_path, layer=99)), check=False)  # fmt: skip
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "layer 99, but random-tiny has layers" in refused.stderr
