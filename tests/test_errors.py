"""One error type for what a user can fix, caught once by the command line."""

import importlib
import inspect
import pkgutil

import pytest
from typer.testing import CliRunner

import wav2genre_cache
from wav2genre_cache.cli.app import app
from wav2genre_cache.errors import OptionError, Wav2GenreError


def _package_modules():
    for info in pkgutil.iter_modules(wav2genre_cache.__path__):
        if info.name != "__main__":  # running it is what it does
            yield importlib.import_module(f"wav2genre_cache.{info.name}")


def _error_classes() -> list[type[Exception]]:
    found = {}
    for module in _package_modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and obj.__module__.startswith("wav2genre_cache"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def test_every_error_class_of_the_package_is_a_wav2genre_error():
    classes = _error_classes()
    names = {c.__name__ for c in classes}
    # The kinds the command line used to list one by one, and those added since.
    assert {"AudioError", "AudioTooLong", "BackboneError", "CacheError", "DatasetError"} <= names
    assert {"HeadError", "OptionError", "ReportError", "TrainError"} <= names
    assert [c for c in classes if not issubclass(c, Wav2GenreError)] == []


@pytest.mark.parametrize("kind", _error_classes(), ids=lambda c: c.__name__)
def test_the_cli_prints_every_kind_as_one_line_and_exits_2(kind, tmp_path, monkeypatch):
    import wav2genre_cache.store.cache as cache

    def fail(*_args, **_kw):
        raise kind(f"{tmp_path}/x.h5: what went wrong; do this instead")

    monkeypatch.setattr(cache, "EmbeddingCache", fail)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "x.h5")])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path}/x.h5: what went wrong; do this instead\n"
    assert result.stdout == ""


def test_a_bug_is_not_dressed_up_as_a_user_error(tmp_path, monkeypatch):
    import wav2genre_cache.store.cache as cache

    def fail(*_args, **_kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cache, "EmbeddingCache", fail)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "x.h5")])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_option_validation_raises_option_error(tmp_path):
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.run import embed_dataset

    opts = EmbedOptions(data=str(tmp_path), out=str(tmp_path / "x.h5"), augment=("reverb",))
    with pytest.raises(OptionError, match=r"unknown augmentation\(s\) \['reverb'\]"):
        embed_dataset(opts, progress=False)
    result = CliRunner().invoke(
        app, ["embed", str(tmp_path), "--out", str(tmp_path / "x.h5"), "--features", "mfcc"]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown feature set(s) ['mfcc']; available:")
    assert result.stderr.count("\n") == 1
