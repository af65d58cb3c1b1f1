"""End to end through the CLI: each layout's fake copy, several datasets with a label map, tags
on real clips, and duplicates found by their decoded audio."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli
from fakes import MTG_HEADER, fake_msd_id, mtg_row, write_audio_file, write_fake_msd

from wav2genre_cache.stage_two.data import load_training_data
from wav2genre_cache.store.cache import EmbeddingCache

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = ("--model", "random-tiny", "--segment-seconds", "1")


def _round_trip(data: list[str], root: Path, *embed_options: str, feature_set: str = "encoder"):
    """embed, train-heads and compare through the CLI; the run's metrics.json and embed's log."""
    cache, run = root / "cache.h5", root / "run"
    embedded = run_cli("embed", *data, "--out", str(cache), *embed_options)
    run_cli(
        "train-heads", str(cache), "--out", str(run), "--heads", "logreg,svm",
        "--layers", "best", "--feature-set", feature_set,
    )  # fmt: skip
    run_cli("compare", str(run))
    assert (run / "comparison.md").is_file() and (run / "best" / "bundle.json").is_file()
    return json.loads((run / "metrics.json").read_text()), embedded.stderr


def test_the_msd_fake_copy_round_trips(tmp_path):
    write_fake_msd(tmp_path / "msd", per_genre=10)
    m, log = _round_trip([str(tmp_path / "msd")], tmp_path, *TINY)
    assert "2 annotated tracks have no audio" in log
    assert m["labels"] == ["Jazz", "Pop_Rock", "Rap"] and m["multi_label"] is False
    cache = EmbeddingCache(tmp_path / "cache.h5")
    assert cache.config["dataset"] == "msd"
    assert fake_msd_id(0, 0) in set(cache.tracks.track_id)


def write_mtg_jamendo(root: Path, n: int = 48) -> Path:
    """An MTG-Jamendo copy whose moods can be heard: each mood adds its own tone."""
    moods = ("calm", "dark", "happy")
    tones = {"calm": 220.0, "dark": 330.0, "happy": 660.0}
    rng = np.random.default_rng(0)
    rows, splits = [MTG_HEADER], {"train": [], "validation": [], "test": []}
    for k in range(1, n + 1):
        tags = [m for m in moods if rng.random() < 0.4] or [moods[k % 3]]
        t = np.arange(int(1.5 * 16_000)) / 16_000
        audio = sum(0.2 * np.sin(2 * np.pi * tones[m] * t) for m in tags)
        audio = audio + 0.01 * rng.standard_normal(t.size)
        path = root / "audio" / f"{k % 100:02d}" / f"{k}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio.astype(np.float32), 16_000)
        rows.append(mtg_row(k, [f"mood/theme---{m}" for m in tags]))
        split = "test" if k % 5 == 0 else "validation" if k % 5 == 1 else "train"
        splits[split].append(mtg_row(k, [f"mood/theme---{m}" for m in tags]))
    data = root / "data"
    (data / "splits" / "split-0").mkdir(parents=True)
    (data / "autotagging_moodtheme.tsv").write_text("\n".join(rows) + "\n")
    for split, lines in splits.items():
        path = data / "splits" / "split-0" / f"autotagging_moodtheme-{split}.tsv"
        path.write_text("\n".join([MTG_HEADER, *lines]) + "\n")
    return root


def test_the_mtg_jamendo_fake_copy_round_trips_as_tags(tmp_path):
    write_mtg_jamendo(tmp_path / "mtg")
    m, _ = _round_trip(
        [str(tmp_path / "mtg")], tmp_path, "--features", "handcrafted", feature_set="handcrafted"
    )
    assert m["multi_label"] is True and m["labels"] == ["calm", "dark", "happy"]
    assert m["counts"] == {"train": 29, "valid": 10, "test": 9}  # the official split-0
    best = next(r for r in m["results"] if r.get("best_overall"))
    # Tones per mood in hand-crafted features: far above the chance PR-AUC (~0.4).
    assert best["test"]["track"]["macro_pr_auc"] > 0.7
    md = (tmp_path / "run" / "comparison.md").read_text()
    assert "Multi-label run (3 tags)" in md
    # Drawn, or (every tag ranked perfectly) said instead.
    assert (tmp_path / "run" / "tag_auc.png").is_file() or "No tag AUC figure" in md


def test_the_csv_labels_column_makes_a_tagger_that_predict_shows(tmp_path, dev_clips):
    run = tmp_path / "run"
    run_cli(
        "run", str(EXAMPLES / "dev_tags.csv"), "--out", str(run), *TINY[:2],
        "--heads", "logreg", "--layers", "best",
    )  # fmt: skip
    m = json.loads((run / "metrics.json").read_text())
    assert m["multi_label"] is True and {"roots", "heavy", "blues"} <= set(m["labels"])
    clip = dev_clips / "metal" / "metal.00000.flac"
    out = json.loads(run_cli("predict", str(clip), "--bundle", str(run), "--json").stdout)[0]
    meta = json.loads((run / "best" / "bundle.json").read_text())
    thresholds = dict(zip(meta["labels"], meta["thresholds"], strict=True))
    assert all(t["probability"] >= thresholds[t["label"]] for t in out["tags"])
    assert all("tags" in seg for seg in out["timeline"])
    shown = {t["label"] for t in out["tags"]}
    above = {k for k, v in out["timeline"][0]["probabilities"].items() if v >= thresholds[k]}
    assert {t["label"] for t in out["timeline"][0]["tags"]} == above
    text = run_cli("predict", str(clip), "--bundle", str(run)).stdout
    assert "tags: " in text and all(label in text for label in shown)


def test_two_datasets_joined_by_a_label_map_report_per_dataset(tmp_path, dev_clips):
    run = tmp_path / "run"
    proc = run_cli(
        "run", str(EXAMPLES / "collection_a.csv"), str(EXAMPLES / "collection_b.csv"),
        "--label-map", str(EXAMPLES / "label_map.csv"), "--out", str(run), *TINY[:2],
        "--heads", "logreg", "--layers", "best",
    )  # fmt: skip
    assert "Embedded 60 tracks" in proc.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["sources"] == ["collection_a", "collection_b"]
    assert m["labels"] == sorted(p.name for p in dev_clips.iterdir())  # one taxonomy
    assert m["counts"] == {"train": 30, "valid": 10, "test": 20}  # the manifests' own splits
    per = m["results"][0]["test"]["per_source"]
    assert {k: v["n"] for k, v in per.items()} == {"collection_a": 10, "collection_b": 10}
    cache = EmbeddingCache(run / "cache.h5")
    assert set(cache.tracks.source) == {"collection_a", "collection_b"}
    assert "collection_b/hiphop.00003" in set(cache.tracks.track_id)
    assert "## Per dataset" in (run / "comparison.md").read_text()


def test_a_label_mapped_to_nothing_is_dropped_and_counted(tmp_path, dev_clips):
    label_map = tmp_path / "map.csv"
    rows = (EXAMPLES / "label_map.csv").read_text().splitlines()
    label_map.write_text("\n".join(r for r in rows if r != "collection_b,Disco,disco") + "\n")
    proc = run_cli(
        "embed", str(EXAMPLES / "collection_a.csv"), str(EXAMPLES / "collection_b.csv"),
        "--label-map", str(label_map), "--out", str(tmp_path / "c.h5"), "--features",
        "handcrafted",
    )  # fmt: skip
    assert "collection_b: 3 tracks with label 'Disco' not in the label map, dropped" in proc.stderr
    assert "Embedded 57 tracks" in proc.stderr


def test_copies_of_one_recording_are_found_by_their_audio_and_kept_on_one_side(tmp_path, dev_clips):
    # The same recording as FLAC and as WAV (other bytes, same audio), in train and in test.
    original = dev_clips / "blues" / "blues.00000.flac"
    audio, sr = sf.read(original)
    sf.write(tmp_path / "copy.wav", audio, sr)
    rows = ["path,label,split"]
    for genre in ("blues", "jazz"):
        for i, split in enumerate(("train", "train", "train", "valid", "test", "test")):
            rows.append(f"{dev_clips / genre / f'{genre}.{i:05d}.flac'},{genre},{split}")
    rows.append(f"{tmp_path / 'copy.wav'},blues,test")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cache = tmp_path / "c.h5"
    run_cli("embed", str(tmp_path / "m.csv"), "--out", str(cache), "--features", "handcrafted")
    data = load_training_data(cache, "handcrafted")
    assert len(data.duplicates["groups"]) == 1 and len(data.duplicates["groups"][0]) == 2
    assert data.duplicates["moved"] == [
        {"track_id": str(tmp_path / "copy"), "from": "test", "to": "train"}
    ]
    info = json.loads(run_cli("info", str(cache), "--json").stdout)
    assert info["duplicates"] == {"recordings": 1, "tracks": 2}


def test_a_copy_of_one_track_written_twice_is_not_a_duplicate_of_another(tmp_path):
    a = write_audio_file(tmp_path / "a.wav", freq=440.0)
    b = write_audio_file(tmp_path / "b.wav", freq=440.0, seed=1)  # same tone, other noise
    from wav2genre_cache.audio.decode import load_track

    assert load_track(a).content_hash != load_track(b).content_hash
    assert load_track(a).content_hash == load_track(a).content_hash


@pytest.mark.parametrize("option", ["--finetune"])
def test_run_refuses_finetune_over_several_datasets_before_embedding(tmp_path, option):
    proc = run_cli(
        "run", str(EXAMPLES / "collection_a.csv"), str(EXAMPLES / "collection_b.csv"),
        "--label-map", str(EXAMPLES / "label_map.csv"), "--out", str(tmp_path / "r"),
        *TINY[:2], option, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--finetune reads one dataset" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_run_refuses_finetune_of_a_tag_dataset_before_embedding(tmp_path, dev_clips):
    proc = run_cli(
        "run", str(EXAMPLES / "dev_tags.csv"), "--out", str(tmp_path / "r"), *TINY[:2],
        "--finetune", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "multi-label (tag) dataset" in proc.stderr
    assert not (tmp_path / "r").exists()
