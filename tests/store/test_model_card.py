"""Model cards: every bundle (train-heads' and finetune's) has a README.md that the Hugging Face
Hub can read, that states its data, test figures with n and interval, and limitations, and that
loading never depends on (bundles without one, or with an edited one, still load)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli_process

from wav2genre_cache.stage_two.train import train_heads
from wav2genre_cache.store.bundles import load_bundle
from wav2genre_cache.store.model_card import CARD_FILE, render_model_card
from wav2genre_cache.testing.synthetic import write_synthetic_cache

huggingface_hub = pytest.importorskip("huggingface_hub")


def hub_card(path: Path):
    """The card as the hub's own client parses it (its YAML header and its text)."""
    return huggingface_hub.ModelCard.load(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A train-heads run on a synthetic cache: 4 labels, no artist known, no test track of one."""
    root = tmp_path_factory.mktemp("card")
    cache = write_synthetic_cache(
        root / "c.h5", n_tracks=80, n_layers=3, dim=16, n_labels=4, segments_per_track=2, sources=2
    )
    train_heads(cache, root / "run", log=lambda m: None, heads="logreg")
    return root / "run"


def test_a_stage_two_bundle_has_a_card_the_hub_reads(run):
    bundle = json.loads((run / "best" / "bundle.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    m = bundle["metrics"]
    card = hub_card(run / "best" / CARD_FILE)
    best_card = (run / "best" / CARD_FILE).read_text()
    assert (run / "bundles" / "logreg" / CARD_FILE).read_text() == best_card
    data = card.data
    assert data.library_name == "wav2genre-cache" and data.pipeline_tag == "audio-classification"
    assert {"audio-classification", "music", "genre"} <= set(data.tags)
    assert data.license == "unknown" and data.base_model is None  # "synthetic" is no hub id
    results = {r.metric_type: r for r in data.eval_results}
    assert results["accuracy"].metric_value == m["test_track_accuracy"]
    assert results["f1"].metric_value == m["test_track_macro_f1"]
    assert results["accuracy"].dataset_name == "source0, source1"
    text = card.text
    lo, hi = m["test_track_accuracy_ci"]
    n = m["test_tracks"]
    assert f"| Track accuracy | {m['test_track_accuracy']:.3f} | {lo:.3f}-{hi:.3f} | {n} |" in text
    assert f"- Backbone: `synthetic`, revision `{bundle['backbone_revision']}`" in text
    assert f"- Feature set: encoder, layer {bundle['layer']}" in text
    assert "- Head: logreg, parameters `" in text
    assert f"- Datasets: source0, source1\n- Read from: `{metrics['cache']}`" in text
    counts = metrics["counts"]
    assert f"train {counts['train']}, valid {counts['valid']}, test {counts['test']}" in text
    assert metrics["selection"]["reason"] in text
    # The limitations the run's grouping calls for: no artist known, a label test never saw.
    unmeasured = list(metrics["grouping"]["unmeasured_labels"])
    assert unmeasured and "inflated by same-artist tracks" in text
    assert f"- {unmeasured[0]} (not measured on test: no test track)" in text
    assert f"Unmeasured labels: {', '.join(unmeasured)}" in text
    assert "means nothing" not in text  # the backbone is not a random one
    # A library call records no command: the card says how to reproduce the run.
    assert f"wav2genre train-heads {metrics['cache']} --out RUN" in text
    assert "hf upload USER/MODEL_NAME BUNDLE_DIR . --repo-type model" in text
    assert "upload_folder(" in text


def test_the_card_counts_tracks_per_label_and_split_as_the_cache_holds_them(run):
    from wav2genre_cache.store.cache import EmbeddingCache

    per_label = EmbeddingCache(json.loads((run / "metrics.json").read_text())["cache"]).summary()[
        "tracks_per_label"
    ]
    text = (run / "best" / CARD_FILE).read_text()
    for label, counts in per_label.items():
        row = " | ".join(str(counts.get(s, 0)) for s in ("train", "valid", "test"))
        assert f"| {label} | {row} |" in text


def test_the_card_is_documentation_loading_never_needs_it(run, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(run / "best", bundle)
    assert (bundle / CARD_FILE).is_file()
    assert CARD_FILE not in json.loads((bundle / "bundle.json").read_text())["files"]
    (bundle / CARD_FILE).write_text("edited on the hub\n")
    load_bundle(bundle)
    (bundle / CARD_FILE).unlink()  # as every bundle written before model cards
    meta, _ = load_bundle(bundle)
    assert meta["head"] == "logreg"


def test_a_fine_tuned_bundle_has_a_card(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "finetune"))
    from test_finetune import options, pitch_set

    from wav2genre_cache.finetune.run import finetune

    data = pitch_set(tmp_path / "d", per_label=8, seconds=1.0)
    finetune(options(data, tmp_path / "run", epochs=1, segment_seconds=1.0), progress=False)
    folder = tmp_path / "run" / "bundles" / "finetuned"
    bundle = json.loads((folder / "bundle.json").read_text())
    m = bundle["metrics"]
    card = hub_card(folder / CARD_FILE)
    assert card.data.license == "unknown" and "audio-classification" in card.data.tags
    text = card.text
    assert text.startswith("\n# random-tiny fine-tuned for music genre classification")
    lo, hi = m["test_track_accuracy_ci"]
    assert f"| Track accuracy | {m['test_track_accuracy']:.3f} | {lo:.3f}-{hi:.3f} | 3 |" in text
    assert "- Tracks per split: train 15, valid 6, test 3" in text
    for label in ("low", "mid", "high"):
        assert f"| {label} | 5 | 2 | 1 |" in text
    assert "this model means nothing" in text  # random-tiny is untrained
    assert "inflated by same-artist tracks" in text
    assert f"wav2genre finetune {data} --out RUN --model random-tiny" in text
    assert "Model selection: valid: the epoch with the best validation score" in text
    load_bundle(folder)


@pytest.mark.parametrize(
    "backbone, licence, base_model",
    [
        ("pip:whisper-tiny.en", "mit", "openai/whisper-tiny.en"),
        ("facebook/wav2vec2-base-960h", "apache-2.0", "facebook/wav2vec2-base-960h"),
        ("random-base", "unknown", None),
        ("m-a-p/MERT-v1-95M", "unknown", "m-a-p/MERT-v1-95M"),
        ("/models/my-encoder", "unknown", None),
    ],
)
def test_the_header_names_the_weights_licence_and_the_hub_base_model(
    backbone, licence, base_model, tmp_path
):
    bundle = {"backbone": backbone, "head": "svm", "labels": ["a", "b"], "metrics": {}}
    (tmp_path / CARD_FILE).write_text(render_model_card(bundle))
    card = hub_card(tmp_path / CARD_FILE)
    assert card.data.license == licence and card.data.base_model == base_model
    assert ("means nothing" in card.text) == backbone.startswith("random-")
    assert "Licence" in card.text and "MIT" in card.text.split("## Licence")[1]


def test_a_tagger_card_and_one_without_test_figures(tmp_path):
    bundle = {
        "backbone": "facebook/wav2vec2-base-960h",
        "head": "fcnn",
        "labels": ["rock", "jazz"],
        "multi_label": True,
        "thresholds": [0.4, 0.6],
        "metrics": {"test_tracks": None, "test_track_accuracy": None, "grouping": {"by": "artist"}},
    }
    text = render_model_card(bundle)
    assert "music tagging" in text and "- multi-label" not in text and '- "multi-label"' in text
    assert "| Track accuracy | n/a | not computed | n/a |" in text
    assert "model-index" not in text  # no figure to report to the hub
    assert "same-artist" not in text  # grouped by artist
    assert "Per-tag thresholds: [0.4, 0.6]" in text


def test_the_command_line_is_recorded_in_the_card(tmp_path):
    cache = write_synthetic_cache(
        tmp_path / "c.h5", n_tracks=40, n_layers=2, dim=8, n_labels=2, segments_per_track=2
    )
    args = ["train-heads", str(cache), "--out", str(tmp_path / "run"), "--heads", "logreg"]
    run_cli_process(*args)
    text = (tmp_path / "run" / "best" / CARD_FILE).read_text()
    assert "## How it was made\n\n```\nwav2genre " + " ".join(args) + "\n```" in text
