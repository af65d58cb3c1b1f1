"""Shared fixtures: the real dev clips in ../shared (skipped when absent) and synthetic audio."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# Under pytest-xdist (`make test` runs one worker per core), each worker and the commands it
# starts share out the cores: two workers of two BLAS/OpenMP threads each on two cores ran the
# heads' tests 9x slower than two workers of one (thread hand-offs dominate small products).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(_threads))  # for a BLAS a plugin loaded before this file

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WAV2GENRE_SHARED", ROOT.parent / "shared"))
DEV_CLIPS = SHARED / "data" / "gtzan_dev"
SPLIT_LISTS = SHARED / "data" / "gtzan_splits"

# Tests never reach the network: the Hugging Face hub is off for every test and subprocess.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# What the package remembers between runs (precision checks, converted Whisper weights) goes to
# a folder of this test session, not the user's ~/.cache: tests see a fresh machine every time.
_CACHE_HOME = tempfile.mkdtemp(prefix="wav2genre-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after pytest-xdist has marked the grouped tests' ids
def pytest_collection_modifyitems(config, items):
    """The longest tests first (the groups, then those marked slow), so that pytest-xdist's
    workers do not end with one of them running alone while the others wait."""

    def weight(item) -> int:
        if item.get_closest_marker("xdist_group"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=weight)  # stable: within each weight, the files' own order


def pytest_runtest_setup(item):
    """Fail a grouped test that --dist loadgroup did not group (a Ray runtime on every worker,
    a module's fixture made once per worker): pytest-xdist marks the ids of grouped tests."""
    if getattr(item.config.option, "loadgroup", False) and "@" not in item.nodeid:
        if item.get_closest_marker("xdist_group"):
            pytest.fail(
                f"pytest-xdist's --dist loadgroup ignored xdist_group here: pytest "
                f"{pytest.__version__} keeps node ids where this pytest-xdist cannot mark them"
            )


@pytest.fixture(scope="session")
def dev_clips() -> Path:
    """The 60 real GTZAN clips of ../shared, or a skip that says why."""
    if not DEV_CLIPS.is_dir():
        pytest.skip(f"real clips not found at {DEV_CLIPS} (a clone without ../shared)")
    return DEV_CLIPS


@pytest.fixture(scope="session")
def split_lists() -> Path:
    """The fault-filtered GTZAN split lists of ../shared, or a skip that says why."""
    if not SPLIT_LISTS.is_dir():
        pytest.skip(f"split lists not found at {SPLIT_LISTS} (a clone without ../shared)")
    return SPLIT_LISTS


def tone(
    seconds: float, sr: int = 16_000, freq: float = 440.0, channels: int = 1, seed: int = 0
) -> np.ndarray:
    """A sine tone with a little noise, [samples] or [samples, channels]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_audio(path: Path, seconds: float, sr: int = 16_000, freq: float = 440.0, **kw) -> Path:
    """Write a synthetic tone; the format follows the file extension (wav, flac, mp3, ogg, au)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, sr, freq, **kw), sr)
    return path


def make_label_folder(
    root: Path, labels=("low", "high"), per_label: int = 4, seconds: float = 3.0
) -> Path:
    """A folder-per-label dataset of tones whose pitch depends on the label."""
    for li, label in enumerate(labels):
        for i in range(per_label):
            write_audio(
                root / label / f"{label}_{i}.wav",
                seconds,
                freq=200.0 * (li + 1) * (1 + 0.05 * i),
                seed=i,
            )
    return root


def run_cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the command line on ARGS and return what a subprocess would: exit code, stdout, stderr.

    In this process, through typer's test runner (the same app, arguments and error handling as
    `wav2genre`, without paying torch's import again: about 3 s a call). A call that passes
    subprocess options (cwd, env, timeout) or uses the Ray engine, which starts and stops a Ray
    runtime of its own, runs in a real `python -m wav2genre_cache` process instead.
    """
    if kw or "ray" in args:
        return run_cli_process(*args, check=check, **kw)
    from typer.testing import CliRunner

    from wav2genre_cache.cli.app import app

    result = CliRunner().invoke(app, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # What Python prints for an uncaught exception: a bug keeps its traceback.
        stderr += "".join(traceback.format_exception(result.exception))
    proc = subprocess.CompletedProcess(
        ["wav2genre", *args], result.exit_code, result.stdout, stderr
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def run_cli_process(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run `python -m wav2genre_cache ARGS` in a real subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "wav2genre_cache", *args], capture_output=True, text=True, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def dev_bundle(tmp_path_factory, dev_clips) -> Path:
    """A bundle trained with random-tiny on 30 real clips (3 per genre), via the real CLI."""
    root = tmp_path_factory.mktemp("bundle")
    rows = ["path,label"]
    for genre_dir in sorted(dev_clips.iterdir()):
        rows += [f"{p},{genre_dir.name}" for p in sorted(genre_dir.glob("*.flac"))[:3]]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    run_cli(
        "run",
        str(root / "manifest.csv"),
        "--out",
        str(root / "run"),
        "--model",
        "random-tiny",
        "--heads",
        "logreg,svm",
        "--layers",
        "best",
    )
    return root / "run" / "best"


# ---- tiny random models, saved as save_pretrained writes them -----------------------------------


def whisper_config(**kw):
    """A Whisper config of real window geometry (80 mels, 3000 frames) and toy width."""
    from transformers import WhisperConfig

    return WhisperConfig(
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        vocab_size=64,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        **kw,
    )


def save_tiny(model_cls, config, path: Path, seed: int = 0) -> str:
    """A seeded random model, saved as save_pretrained writes it."""
    import torch

    torch.manual_seed(seed)
    model_cls(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory) -> str:
    """A tiny random WhisperForConditionalGeneration checkpoint (an openai/whisper-* layout)."""
    from transformers import WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("whisper")
    return save_tiny(WhisperForConditionalGeneration, whisper_config(), root / "whisper")
