"""What stage two says about artists: labels test cannot measure, test artists heard in training."""

import pandas as pd

from wav2genre_cache.stage_two.data import artist_grouping


def tracks(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["label", "split", "artist"])


def test_labels_without_test_tracks_are_named_with_their_artists():
    ok = tracks([
        ("blues", "train", "Hooker"), ("blues", "train", "Hooker"),
        ("jazz", "train", "Carter"), ("jazz", "valid", "Bernstein"),
        ("pop", "train", "Moore"), ("pop", "test", "Carey"),
    ])  # fmt: skip
    g = artist_grouping(ok, ["blues", "jazz", "pop"], multi_label=False)
    assert g["unmeasured_labels"] == {"blues": "one artist: Hooker", "jazz": "2 artists"}
    assert g["by"] == "artist" and g["artists"] == 5 and g["test_artists_heard"] == 0
    assert len(g["notes"]) == 1 and g["notes"][0].startswith(
        "Not measured on test (no test track): blues (one artist: Hooker), jazz (2 artists)"
    )


def test_a_test_artist_heard_in_training_is_said():
    ok = tracks([
        ("pop", "train", "Carey"), ("pop", "test", "Carey"), ("rock", "train", "X"),
        ("rock", "test", "Y"),
    ])  # fmt: skip
    g = artist_grouping(ok, ["pop", "rock"], multi_label=False)
    assert g["test_artists_heard"] == 1
    assert any(
        n.startswith("1 of the 2 test artists also have tracks in training") for n in g["notes"]
    )


def test_without_artists_the_figures_are_said_to_be_inflated():
    ok = tracks(
        [("pop", "train", ""), ("pop", "test", ""), ("rock", "train", ""), ("rock", "test", "")]
    )
    g = artist_grouping(ok, ["pop", "rock"], multi_label=False)
    assert g["by"] is None and g["tracks_without_artist"] == 4
    assert any("No artist is known" in n and "inflates every figure" in n for n in g["notes"])


def test_tags_count_per_tag():
    ok = tracks([("happy|sad", "train", "A"), ("happy", "test", "B"), ("sad", "train", "A")])
    g = artist_grouping(ok, ["happy", "sad"], multi_label=True)
    assert g["unmeasured_labels"] == {"sad": "one artist: A"}


def test_a_label_without_test_tracks_or_artists_is_named_alone():
    ok = tracks([("pop", "train", ""), ("pop", "test", ""), ("rock", "train", "")])
    g = artist_grouping(ok, ["pop", "rock"], multi_label=False)
    assert g["unmeasured_labels"] == {"rock": ""}
    assert g["notes"][0].startswith("Not measured on test (no test track): rock: their tracks")
