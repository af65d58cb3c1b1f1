"""CTranslate2 model.bin reading (ct2_format): a writer of the format, and the reader against it.

No Whisper here: tests/test_ct2_whisper.py converts what this reader reads (and uses the writer).
"""

import struct

import numpy as np
import pytest
from fakes import CT2_CODES as CODES
from fakes import ct2_bytes

from wav2genre_cache.encoders.backbone import BackboneError
from wav2genre_cache.encoders.ct2 import format as cf


def small_model_bin() -> bytes:
    """A valid file whose bytes are mostly one weight, with an alias table."""
    rng = np.random.default_rng(0)
    variables = {
        "encoder/num_heads": np.array(2, np.int16),
        "encoder/conv1/weight": rng.standard_normal((64, 80, 3)).astype(np.float16),
        "encoder/conv1/bias": rng.standard_normal(64).astype(np.float16),
    }
    return ct2_bytes(variables, {"decoder/projection/weight": "encoder/conv1/weight"})


def test_an_index_records_every_variable_and_resolves_aliases(tmp_path):
    data = small_model_bin()
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    with cf.open_model_bin(path) as f:
        index = cf.read_index(f, str(path), len(data))
        assert (index.spec, index.revision) == ("WhisperSpec", 3)
        assert index.variables["encoder/conv1/weight"].shape == (64, 80, 3)
        assert index.resolve("decoder/projection/weight") is index.variables["encoder/conv1/weight"]
        assert index.resolve("nothing") is None
        heads = cf.read_array(f, index, "encoder/num_heads")
        weight = cf.read_array(f, index, "decoder/projection/weight")
    assert heads.dtype == np.int16 and int(heads) == 2
    assert weight.dtype == np.float32 and weight.shape == (64, 80, 3)
    assert cf.spec_name(path) == "WhisperSpec"


def test_an_alias_loop_resolves_to_nothing():
    index = cf.Ct2Index("x", "WhisperSpec", 3, {}, {"a": "b", "b": "a"})
    assert index.resolve("a") is None


def test_parts_read_as_one_file_at_every_offset(tmp_path):
    data = small_model_bin()
    cuts = [0, 7, 1000, len(data) // 2, len(data)]
    parts = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        parts.append(tmp_path / f"model.bin.part{i}")
        parts[-1].write_bytes(data[a:b])
    with cf.open_model_bin(parts) as f:
        assert f.read() == data
        for start in (0, 5, 995, 999, 1000, len(data) // 2 - 1, len(data) - 3):
            f.seek(start)
            assert f.read(10) == data[start : start + 10]
        index = cf.read_index(f, "parts", len(data))
        assert set(index.variables) == {
            "encoder/num_heads",
            "encoder/conv1/weight",
            "encoder/conv1/bias",
        }


def test_a_missing_part_is_a_backbone_error(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    with pytest.raises(BackboneError, match="cannot read"):
        cf.open_model_bin([tmp_path / "a", tmp_path / "missing"])


def test_float32_and_bfloat16_variables(tmp_path):
    x = np.array([[1.5, -2.25], [3.0, 2**-7]], np.float32)
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.int16)  # exact in bfloat16
    raw = bytearray(ct2_bytes({"a": x, "b": bf16}))
    # Re-tag b's dtype as bfloat16 (code 5): the writer has no numpy type for it.
    pos = raw.index(b"b\0") + 2 + 1 + 2 * 4
    assert raw[pos] == CODES[np.int16]
    raw[pos] = 5
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(raw))
    with cf.open_model_bin(path) as f:
        index = cf.read_index(f, str(path), len(raw))
        np.testing.assert_array_equal(cf.read_array(f, index, "a"), x)
        b = cf.read_array(f, index, "b")
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, x)


def _malformed(data: bytes) -> dict[str, bytes]:
    """Broken variants of a valid model.bin."""
    name = b"encoder/conv1/bias\0"
    dtype_at = data.index(name) + len(name) + 1 + 4
    unknown = bytearray(data)
    unknown[dtype_at] = 9
    return {
        "wrong version": struct.pack("<I", 5) + data[4:],
        "truncated header": data[:5],
        "truncated in a weight": data[: len(data) // 2],
        "truncated before the aliases": data[: data.rindex(b"decoder/projection") - 6],
        "unknown dtype": bytes(unknown),
        "trailing bytes": data + b"\0\0",
        "garbage": np.random.default_rng(0).bytes(4096),
        "empty": b"",
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong version",
        "truncated header",
        "truncated in a weight",
        "truncated before the aliases",
        "unknown dtype",
        "trailing bytes",
        "garbage",
        "empty",
    ],
)
def test_malformed_files_are_refused_by_name(tmp_path, case):
    data = _malformed(small_model_bin())[case]
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    with pytest.raises(BackboneError, match=str(path).replace(".", r"\.")) as err:
        with cf.open_model_bin(path) as f:
            cf.read_index(f, str(path), len(data))
    assert "CTranslate2" in str(err.value)
    if case == "wrong version":
        assert "binary version 5" in str(err.value)
    if case == "truncated in a weight":
        assert "a variable ends at byte" in str(err.value)
