"""The package as a user installs it: a built wheel in a fresh virtual environment (not editable,
no dev extras) runs the command line on a cache and a bundle made here."""

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT, run_cli

from wav2genre_cache import __version__
from wav2genre_cache.testing.synthetic import write_demo_audio, write_synthetic_cache


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The project built as a wheel, as `pip wheel .` (or `python -m build`) makes it."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("wav2genre_cache-*.whl")
    return path


def test_the_wheel_carries_the_page_and_the_type_hints(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "app.js", "style.css"):
        assert f"wav2genre_cache/inference/static/{name}" in names
    assert "wav2genre_cache/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)
    assert wheel.name.startswith(f"wav2genre_cache-{__version__}-")


@pytest.mark.slow
def test_a_fresh_environment_installs_the_wheel_and_runs_it(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    bin_dir = env_dir / "bin"
    # Dependencies from the package index (pip's cache holds what `make setup` fetched).
    subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cli = str(bin_dir / "wav2genre")

    def run(*args):
        proc = subprocess.run([cli, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc

    assert run("--version").stdout.strip().endswith(__version__)
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import wav2genre_cache; print(wav2genre_cache.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    ).stdout
    assert str(env_dir) in where  # the installed copy, not this checkout
    cache = write_synthetic_cache(tmp_path / "c.h5", n_tracks=40, n_layers=2, dim=8, n_labels=4)
    assert "40 tracks" in run("info", str(cache)).stdout
    # A real bundle (the built-in untrained model on synthetic audio), made by this checkout.
    audio = write_demo_audio(tmp_path / "audio", per_label=6, seconds=4.0)
    run_cli(
        "run", str(audio), "--out", str(tmp_path / "run"), "--model", "random-tiny",
        "--heads", "logreg", "--layers", "best", "--segment-seconds", "2",
    )  # fmt: skip
    clip = sorted(p for p in audio.rglob("*.wav"))[0]
    out = run("predict", str(clip), "--bundle", str(tmp_path / "run" / "best")).stdout
    assert clip.name in out
