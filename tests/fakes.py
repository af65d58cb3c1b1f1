"""Fake inputs that tests in several folders share: datasets of each layout, audio bytes, rows for
every head, CTranslate2 files, a running server."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf

from wav2genre_cache.heads import Rows

# CTranslate2's dtype codes.
CT2_CODES = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}


def _ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    version: int = 6,
    spec: str = "WhisperSpec",
) -> bytes:
    """A CTranslate2 model.bin (binary version 6 layout) holding `variables`."""
    out = [struct.pack("<I", version), _ct2_string(spec), struct.pack("<II", 3, len(variables))]
    for name, arr in variables.items():
        arr = np.asarray(arr)
        out += [_ct2_string(name), struct.pack("<B", arr.ndim)]
        out += [struct.pack("<I", d) for d in arr.shape]
        out += [
            struct.pack("<BI", CT2_CODES[arr.dtype.type], arr.nbytes),
            arr.astype("<" + arr.dtype.str[1:]).tobytes(),
        ]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out += [_ct2_string(alias), _ct2_string(target)]
    return b"".join(out)


# Small enough that every head fits in well under a second on 40 rows.
TINY = {
    "fcnn": dict(hidden_layers=(8,), max_epochs=2),
    "xgb": dict(n_estimators=3),
    "fcnn-weighted": dict(n_layers=2, hidden_layers=(8,), max_epochs=2),
    "attention": dict(hidden=8, max_epochs=2),
    **{k: dict(n_mels=16, channels=4, hidden=4, max_epochs=1) for k in ("cnn", "lstm", "cnn-lstm")},
}


def rows(name: str, seed: int) -> Rows:
    """40 rows of 256 features (16 mels x 16 frames; 2 layers x 128), 10 tracks of 4, 2 labels."""
    rng = np.random.default_rng(seed)
    groups = np.arange(40) // 4
    y = groups % 2
    X = (rng.standard_normal((40, 256)) + 2.0 * y[:, None]).astype(np.float32)
    return Rows(X, y, groups)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(bundle, log_path, *options: str):
    """`wav2genre serve` on a free 127.0.0.1 port, up and answering: its URL, process and log."""
    port = free_port()
    log = log_path.open("w")  # a file, not a pipe: a pipe nobody reads would block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", "serve", "--bundle", str(bundle)]
        + ["--port", str(port), *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            if proc.poll() is not None:
                pytest.fail(f"server exited: {log_path.read_text()}")
        else:
            pytest.fail("server did not start in 60 s")
        yield SimpleNamespace(url=url, proc=proc, log=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def silent_flac(seconds: float, rate: int = 96_000, channels: int = 8) -> bytes:
    """FLAC of multi-channel high-rate silence: ~0.8 KB per second that decodes to 3 MB/s."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((rate, channels), np.int16)
        for _ in range(int(seconds)):
            f.write(block)
    return buf.getvalue()


def without_length(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's sample count set to 0, 'unknown' (as piped encoders do)."""
    assert flac[:4] == b"fLaC" and flac[4] & 0x7F == 0  # STREAMINFO is the first block
    at = 8 + 10  # its 64 bits of rate (20), channels (3), bits (5), total samples (36)
    packed = int.from_bytes(flac[at : at + 8], "big") & ~((1 << 36) - 1)
    return flac[:at] + packed.to_bytes(8, "big") + flac[at + 8 :]


SR = 16_000


FAKE_MSD_GENRES = ("Pop_Rock", "Jazz", "Rap")  # tagtraum CD2 genre names


FAKE_MSD_NO_AUDIO = ("TRMISSING0001128F9", "TRMISSING0002128F9")  # annotated, no preview


FAKE_MSD_UNANNOTATED = "TRZZZZZZZZ128F9000"  # a preview with no annotation


def write_audio_file(path: Path, seconds: float = 1.5, freq: float = 440.0, seed: int = 0) -> Path:
    """A short real audio file: a tone plus noise; the format follows the extension (.wav, .mp3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    noise = np.random.default_rng(seed).standard_normal(t.size)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32), SR)
    return path


def fake_msd_id(genre: int, i: int) -> str:
    """The MSD-style track id (TR + 16 of [A-Z0-9]) of the fake copy's i-th track of a genre."""
    return f"TRFAKE{genre}{i:03d}128F9000"


def fake_msd_artist(genre: int, i: int) -> str:
    """Two tracks per artist, so that a random split has whole artists to keep together."""
    return f"Artist {genre}-{i // 2}"


def write_fake_msd(
    root: Path,
    per_genre: int = 8,
    annotations: str = "msd_tagtraum_cd2c.cls",
    annotations_dir: str = "",
    seconds: float = 1.5,
) -> Path:
    """A fake MSD with tagtraum labels; returns root. Its files:

    root/<annotations_dir>/msd_tagtraum_cd2c.cls   '#' comments, then TRACKID<TAB>genre lines,
        every third with a minority genre; per_genre tracks of each of FAKE_MSD_GENRES
        (fake_msd_id(g, i)) plus FAKE_MSD_NO_AUDIO (Jazz), which have no audio
    root/AdditionalFiles/unique_tracks.txt          TRACKID<SEP>SONGID<SEP>artist<SEP>title for
        all annotated tracks; artist fake_msd_artist(g, i)
    root/previews/<g>/<i % 2>/<TRACKID>.wav         the previews (a tone per genre)
    root/previews/FAKE_MSD_UNANNOTATED.wav          a preview that no annotation names
    """
    lines = ["# tagtraum genre annotations (fake)", "# TRACKID\tmajority\tminority"]
    unique = []
    for g, genre in enumerate(FAKE_MSD_GENRES):
        for i in range(per_genre):
            tid = fake_msd_id(g, i)
            minority = f"\t{FAKE_MSD_GENRES[(g + 1) % 3]}" if i % 3 == 0 else ""
            lines.append(f"{tid}\t{genre}{minority}")
            unique.append(f"{tid}<SEP>SO{tid[2:]}<SEP>{fake_msd_artist(g, i)}<SEP>Song {i}")
            write_audio_file(
                root / "previews" / str(g) / str(i % 2) / f"{tid}.wav",
                seconds,
                freq=220.0 * (g + 1) * (1 + 0.03 * i),
                seed=i,
            )
    for tid in FAKE_MSD_NO_AUDIO:
        lines.append(f"{tid}\tJazz")
        unique.append(f"{tid}<SEP>SO{tid[2:]}<SEP>Lost Artist<SEP>Lost Song")
    write_audio_file(root / "previews" / f"{FAKE_MSD_UNANNOTATED}.wav", seconds)
    (root / annotations_dir).mkdir(parents=True, exist_ok=True)
    (root / annotations_dir / annotations).write_text("\n".join(lines) + "\n")
    (root / "AdditionalFiles").mkdir(parents=True, exist_ok=True)
    (root / "AdditionalFiles" / "unique_tracks.txt").write_text("\n".join(unique) + "\n")
    return root


MTG_HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"


FAKE_MTG_MOODS = ("happy", "sad", "energetic", "calm")


FAKE_MTG_TRACKS = tuple(range(1, 13))  # track_0000001 .. track_0000012


FAKE_MTG_LOW = 5  # its audio is the low-quality download, 05/5.low.mp3


FAKE_MTG_AT_ROOT = 6  # its audio is root/06/6.mp3, not under root/audio


FAKE_MTG_NO_AUDIO = 7  # listed, no audio anywhere


# The official splits the fake copy holds; track 12 is in none (excluded).
FAKE_MTG_SPLITS = {
    "split-0": {"train": range(1, 9), "validation": (9, 10), "test": (11,)},
    "split-1": {"train": range(4, 12), "validation": (1, 2), "test": (3,)},
}


def fake_mtg_id(n: int) -> str:
    """The fake copy's track id of track n, as MTG-Jamendo writes them."""
    return f"track_{n:07d}"


def fake_mtg_moods(n: int) -> list[str]:
    """The one or two mood tags of track n (without the mood/theme--- prefix), sorted."""
    return sorted({FAKE_MTG_MOODS[n % 4], FAKE_MTG_MOODS[(n // 3) % 4]})


def mtg_row(n: int, tags: list[str], artist: int | None = None) -> str:
    """One autotagging tsv row: the tags are the 6th and following fields."""
    artist = (n - 1) // 2 if artist is None else artist
    fields = [fake_mtg_id(n), f"artist_{artist:06d}", f"album_{n:06d}", f"{n % 100:02d}/{n}.mp3"]
    return "\t".join([*fields, "200.0", *tags])


def write_fake_mtg_jamendo(root: Path, seconds: float = 1.5) -> Path:
    """A fake MTG-Jamendo (as the mtg-jamendo-dataset repository plus downloaded audio); root.

    root/data/autotagging_moodtheme.tsv   header, then tracks FAKE_MTG_TRACKS with the tags
        mood/theme---<m> for m in fake_mtg_moods(n), one per field; artist_{(n-1)//2:06d}
    root/data/splits/split-0|split-1/autotagging_moodtheme-{train,validation,test}.tsv
        FAKE_MTG_SPLITS (same format; track 12 in none)
    root/audio/NN/N.mp3                    real MP3s (NN = N % 100, two digits; a tone per tag)
    root/audio/05/5.low.mp3                track FAKE_MTG_LOW, the low-quality name
    root/06/6.mp3                          track FAKE_MTG_AT_ROOT, straight under root
    (nothing)                              track FAKE_MTG_NO_AUDIO
    """
    rows = {
        n: mtg_row(n, [f"mood/theme---{m}" for m in fake_mtg_moods(n)]) for n in FAKE_MTG_TRACKS
    }
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "autotagging_moodtheme.tsv").write_text("\n".join([MTG_HEADER, *rows.values()]) + "\n")
    for split_name, splits in FAKE_MTG_SPLITS.items():
        folder = data / "splits" / split_name
        folder.mkdir(parents=True)
        for part, members in splits.items():
            text = "\n".join([MTG_HEADER, *(rows[n] for n in members)]) + "\n"
            (folder / f"autotagging_moodtheme-{part}.tsv").write_text(text)
    for n in FAKE_MTG_TRACKS:
        if n == FAKE_MTG_NO_AUDIO:
            continue
        rel = Path(f"{n % 100:02d}") / (f"{n}.low.mp3" if n == FAKE_MTG_LOW else f"{n}.mp3")
        where = root if n == FAKE_MTG_AT_ROOT else root / "audio"
        freq = 200.0 * (1 + FAKE_MTG_MOODS.index(fake_mtg_moods(n)[0]))
        write_audio_file(where / rel, seconds, freq=freq, seed=n)
    return root


def write_labelled_folder(root: Path, labels: dict[str, int], seconds: float = 1.5) -> Path:
    """A folder-per-label dataset: labels {label: number of tracks}, files <label>/<label>_i.wav."""
    for li, (label, n) in enumerate(labels.items()):
        for i in range(n):
            write_audio_file(root / label / f"{label}_{i}.wav", seconds, 200.0 * (li + 1), seed=i)
    return root
