"""predict's inputs: files, folders and CSV manifests, in the order given."""

import pytest
from conftest import write_audio

from wav2genre_cache.catalogue.inputs import catalogue_inputs
from wav2genre_cache.catalogue.ray_predict import shard_files
from wav2genre_cache.errors import DatasetError
from wav2genre_cache.inference.inputs import SkippedInput


def test_a_manifest_names_its_files_relative_to_itself_in_its_order(tmp_path):
    a = write_audio(tmp_path / "audio" / "a.wav", 1.5)
    b = write_audio(tmp_path / "audio" / "b.wav", 1.5)
    loose = write_audio(tmp_path / "loose.wav", 1.5)
    manifest = tmp_path / "audio" / "list.csv"
    manifest.write_text(f"path,label\nb.wav,rock\n{a},jazz\nmissing.wav,\n")
    got = catalogue_inputs([loose, manifest, tmp_path / "audio"])
    assert got[:3] == [loose, tmp_path / "audio" / "b.wav", a]
    assert got[3] == SkippedInput(tmp_path / "audio" / "missing.wav", "does not exist")
    assert got[4:] == [a, b]  # the folder: its audio files (the manifest is not audio)


def test_a_manifest_without_a_path_column_is_refused_naming_it(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,label\na.wav,rock\n")
    with pytest.raises(DatasetError, match=r"list\.csv: missing column\(s\) \['path'\]"):
        catalogue_inputs([manifest])
    manifest.write_text("path\n \n\n")
    assert catalogue_inputs([manifest]) == []  # blank lines are not rows


def test_shards_hold_16_to_1024_files_about_64_per_run():
    assert [shard_files(n) for n in (1, 47, 2_000, 64_000, 10**8)] == [16, 16, 32, 1000, 1024]
