"""cross-validate grouped by artist: no artist on both sides of a fold, one-artist labels train."""

import pytest
from conftest import SHARED, run_cli

from wav2genre_cache.stage_two import crossval
from wav2genre_cache.store.cache import EmbeddingCache

ONE_ARTIST = {"blues", "classical", "reggae", "rock"}  # in the 60 dev clips


@pytest.fixture(scope="module")
def dev_handcrafted(tmp_path_factory, dev_clips):
    """Hand-crafted features of the dev clips, with their artists from GTZAN's index."""
    if not (SHARED / "data" / "gtzan_artists" / "GTZANindex.txt").is_file():
        pytest.skip("no GTZAN artist index in ../shared/data/gtzan_artists")
    out = tmp_path_factory.mktemp("cv") / "hc.h5"
    run_cli("embed", str(dev_clips), "--out", str(out), "--features", "handcrafted")
    return out


def folds_of(cache, monkeypatch, **options) -> tuple[dict, list[set[int]]]:
    """The result and each fold's test tracks (as cross_validate scores them)."""
    tested, real = [], crossval.head_scores

    def recording(spec, head, X, y, track, *args):
        tested.append(set(track.tolist()))
        return real(spec, head, X, y, track, *args)

    monkeypatch.setattr(crossval, "head_scores", recording)
    result = crossval.cross_validate(
        cache, "handcrafted", ["logreg"], 0, folds=5, repeats=2, **options
    )
    return result, tested


def test_folds_keep_artists_apart_and_labels_of_one_artist_only_train(dev_handcrafted, monkeypatch):
    tracks = EmbeddingCache(dev_handcrafted).tracks
    result, tested = folds_of(dev_handcrafted, monkeypatch)
    assert result["grouped_by"] == "artist" and set(result["unmeasured_labels"]) == ONE_ARTIST
    assert result["unmeasured_labels"]["blues"] == "one artist: John Lee Hooker"
    assert result["tracks"] == 36 and result["train_only_tracks"] == 24 and len(tested) == 10
    for test in tested:
        test_artists = set(tracks.artist.iloc[sorted(test)]) - {""}
        train_artists = set(tracks.artist.drop(index=sorted(test))) - {""}
        assert not test_artists & train_artists
        assert not set(tracks.label.iloc[sorted(test)]) & ONE_ARTIST
    # Every tested track is tested once per repeat.
    assert sum(len(t) for t in tested) == 2 * 36


def test_without_grouping_every_track_is_tested_and_the_output_says_it_may_be_inflated(
    dev_handcrafted, monkeypatch
):
    result, tested = folds_of(dev_handcrafted, monkeypatch, group_by="none")
    assert result["grouped_by"] == "recording" and result["unmeasured_labels"] == {}
    assert result["tracks"] == 60 and sum(len(t) for t in tested) == 2 * 60
    said = run_cli("cross-validate", str(dev_handcrafted), "--heads", "logreg", "--folds", "3",
                   "--repeats", "1", "--group-by", "none")  # fmt: skip
    assert "by recording" in said.stdout and "inflates these figures" in said.stdout
    grouped = run_cli("cross-validate", str(dev_handcrafted), "--heads", "logreg", "--folds",
                      "3", "--repeats", "1")  # fmt: skip
    assert "by artist (27 artists)" in grouped.stdout
    assert "not measured (their tracks only train): blues (one artist: John Lee Hooker)" in (
        grouped.stdout
    )


def test_info_counts_the_artists_splits_keep_apart(dev_handcrafted):
    import json

    info = json.loads(run_cli("info", str(dev_handcrafted), "--json").stdout)
    assert info["artists"] == {"known": 30, "tracks_without": 1}  # one country clip is blank
    said = run_cli("info", str(dev_handcrafted)).stdout
    assert "artists    30 (1 tracks without one)" in said
