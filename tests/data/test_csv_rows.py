"""Manifests and label maps: each malformed row is one error naming the file, line and problem."""

from pathlib import Path

import pytest

from wav2genre_cache.data.catalogue import read_source
from wav2genre_cache.data.label_maps import read_label_map
from wav2genre_cache.errors import DatasetError


def manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "rows, problem",
    [
        ("a.wav,rock\nb.wav,\n", "line 3: empty label"),
        ("a.wav,rock\nb.wav,   \n", "line 3: empty label"),
        (
            'a.wav,rock\nb.wav,"hard\nrock"\n',
            "line 4: label 'hard\\nrock' holds a control character",
        ),
        ("a.wav,rock\tpop\n", "line 2: label 'rock\\tpop' holds a control character"),
        ("a.wav,rock,extra\n", "line 2: 3 fields where the header has 2 (path, label)"),
        (",rock\n", "line 2: empty path"),
    ],
)
def test_a_bad_manifest_row_is_named(tmp_path, rows, problem):
    with pytest.raises(DatasetError) as error:
        read_source(manifest(tmp_path, "path,label\n" + rows), "csv")
    assert f"m.csv, {problem}" in str(error.value)
    assert "duplicate track ids" not in str(error.value)


def test_a_tag_with_a_control_character_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"line 2: label 'sad\\x07' holds a control character"):
        read_source(manifest(tmp_path, "path,labels\na.wav,happy|sad\x07\n"), "csv")


def test_column_names_are_trimmed_and_blank_lines_skipped(tmp_path):
    path = manifest(tmp_path, "\ufeff path , label \n\na.wav,rock\n\nb.wav,pop\n")
    assert [t.label for t in read_source(path, "csv").tracks] == ["rock", "pop"]
    label_map = tmp_path / "map.csv"
    label_map.write_text("source , label , target\n*,rock,Rock\n")
    assert read_label_map(label_map, ["m"]) == {("*", "rock"): "Rock"}


def test_a_label_map_row_of_more_fields_or_a_control_character_is_named(tmp_path):
    label_map = tmp_path / "map.csv"
    label_map.write_text("source,label,target\n*,rock,Rock,x\n")
    with pytest.raises(DatasetError, match=r"map.csv, line 2: 4 fields where the header has 3"):
        read_label_map(label_map, ["m"])
    label_map.write_text('source,label,target\n*,rock,"Ro\nck"\n')
    with pytest.raises(DatasetError, match=r"map.csv, line 3: label 'Ro\\nck' holds a control"):
        read_label_map(label_map, ["m"])
