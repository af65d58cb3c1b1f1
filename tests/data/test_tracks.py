"""Tracks and tags: the data model of data/tracks.py."""

from __future__ import annotations

from wav2genre_cache.data.tracks import TAG_SEPARATOR, Track, join_tags, tags_of


def test_tags_are_sorted_and_joined_by_the_separator():
    assert TAG_SEPARATOR == "|"
    assert join_tags([" sad", "happy", "sad", ""]) == "happy|sad"
    assert tags_of("happy|sad") == ["happy", "sad"]
    assert tags_of("rock") == ["rock"] and tags_of("") == [] and tags_of("a||b|") == ["a", "b"]


def test_track_source_is_the_last_field():
    t = Track("id", "a.wav", "rock", "train", "someone")
    assert (t.split, t.artist, t.source) == ("train", "someone", "")
