import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import make_label_folder, run_cli, run_cli_process, write_audio

from wav2genre_cache.data.splits import read_gtzan_ff
from wav2genre_cache.store.cache import EmbeddingCache


def assert_same_cache(a: Path, b: Path) -> None:
    ca, cb = EmbeddingCache(a), EmbeddingCache(b)
    assert ca.tracks.equals(cb.tracks)
    assert ca.segments.equals(cb.segments)
    assert ca.feature_names == cb.feature_names
    for name in ca.feature_names:
        np.testing.assert_array_equal(ca.features(name), cb.features(name))


def test_bad_files_are_reported_stored_as_failed_and_the_run_goes_on(tmp_path):
    data = make_label_folder(tmp_path / "data", per_label=2, seconds=2.0)
    (data / "low" / "empty.wav").write_bytes(b"")
    (data / "low" / "text.mp3").write_text("not audio at all\n" * 50)
    (data / "low" / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(2000))
    sf.write(data / "high" / "silence.wav", np.zeros(32_000, np.float32), 16_000)
    write_audio(data / "high" / "tiny.wav", 0.4)
    (data / "high" / "unreadable.ogg").symlink_to(tmp_path / "nowhere.ogg")
    proc = run_cli(
        "embed",
        str(data),
        "--out",
        str(tmp_path / "c.h5"),
        "--model",
        "random-tiny",
        "--segment-seconds",
        "1",
        "--workers",
        "1",
    )
    for name, reason in [
        ("empty.wav", "empty file"),
        ("text.mp3", "not a decodable"),
        ("corrupt.flac", "not a decodable"),
        ("tiny.wav", "too short"),
        ("unreadable.ogg", "cannot read file"),
    ]:
        assert name in proc.stderr and reason in proc.stderr, name
    assert "5 track(s) failed" in proc.stderr
    cache = EmbeddingCache(tmp_path / "c.h5")
    t = cache.tracks.set_index("track_id")
    assert t.loc["high/silence", "status"] == "ok"  # silence is valid audio
    assert (t.status == "failed").sum() == 5 and "too short" in t.loc["high/tiny", "reason"]
    assert np.all(np.isfinite(cache.features("encoder")))
    # --strict turns any failure into a non-zero exit, on the same (complete) cache; the encoder
    # feature set's earlier name is the same setting (a different one would exit 2).
    strict = run_cli(
        "embed",
        str(data),
        "--out",
        str(tmp_path / "c.h5"),
        "--model",
        "random-tiny",
        "--segment-seconds",
        "1",
        "--features",
        "wav2vec2",
        "--strict",
        check=False,
    )
    assert strict.returncode == 1


def test_a_manifest_of_uris_is_fetched_through_pyarrow_filesystems(tmp_path):
    # file:// stands in for s3:// and gs://: the same pyarrow FileSystem.from_uri path.
    pytest.importorskip("pyarrow", reason="URIs are read with pyarrow (the [ray] extra)")
    good = [write_audio(tmp_path / "store" / f"a {i}.flac", 2.0, seed=i) for i in range(2)]
    rows = [f"{p.as_uri()},tone" for p in good] + [f"{(tmp_path / 'gone.wav').as_uri()},tone"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    proc = run_cli("embed", str(tmp_path / "m.csv"), "--out", str(tmp_path / "c.h5"),
                   "--model", "random-tiny", "--segment-seconds", "1", "--split", "random")  # fmt: skip
    t = EmbeddingCache(tmp_path / "c.h5").tracks.set_index("track_id")
    assert list(t.status) == ["ok", "ok", "failed"]
    assert t.loc[(tmp_path / "store" / "a 0").as_posix(), "path"] == good[0].as_uri()
    gone = (tmp_path / "gone.wav").as_uri()
    assert t.loc[(tmp_path / "gone").as_posix(), "reason"].startswith(f"{gone}: cannot read")
    assert gone in proc.stderr


def test_no_good_track_exits_non_zero(tmp_path):
    data = tmp_path / "data"
    (data / "x").mkdir(parents=True)
    (data / "x" / "a.wav").write_bytes(b"")
    proc = run_cli(
        "embed", str(data), "--out", str(tmp_path / "c.h5"), "--model", "random-tiny", check=False
    )
    assert proc.returncode == 1 and "no track could be embedded" in proc.stderr


def test_different_settings_are_refused_with_what_differs(tmp_path):
    data = make_label_folder(tmp_path / "data", per_label=1, seconds=2.0)
    out = str(tmp_path / "c.h5")
    run_cli("embed", str(data), "--out", out, "--model", "random-tiny", "--segment-seconds", "1")
    again = run_cli(
        "embed", str(data), "--out", out, "--model", "random-tiny", "--segment-seconds", "1"
    )
    assert "already complete" in again.stderr
    proc = run_cli(
        "embed",
        str(data),
        "--out",
        out,
        "--model",
        "random-tiny",
        "--segment-seconds",
        "2",
        check=False,
    )
    assert proc.returncode == 2
    assert "different settings" in proc.stderr and "segment_seconds" in proc.stderr
    assert "1.0" in proc.stderr and "2.0" in proc.stderr


def test_sigkill_then_resume_gives_the_same_cache(tmp_path, dev_clips):
    # 20 real clips in 2 blocks of 16 tracks; killed after the first block is safely on disk.
    data = tmp_path / "data"
    for f in sorted(dev_clips.glob("*/*.flac"))[::3]:
        (data / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, data / f.parent.name / f.name)
    args = [
        "embed",
        str(data),
        "--model",
        "random-tiny",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--segment-seconds",
        "5",
    ]
    # Every run a process of its own, as the killed one must be: the caches are compared bit for
    # bit, and a run in the test's process once differed from one in its own in a float16 bit.
    run_cli_process(*args, "--out", str(tmp_path / "whole.h5"))

    out = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = Path(str(out) + ".partial")
    deadline = time.time() + 120
    while time.time() < deadline and not list(partial.glob("shard-*.h5")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(partial.glob("shard-*.h5")), "the run never wrote a shard"
    assert not out.exists(), "the run finished before it could be killed"

    resumed = run_cli_process(*args, "--out", str(out))
    assert "Resuming: 16 of 20 tracks already embedded" in resumed.stderr
    assert not partial.exists()
    assert_same_cache(out, tmp_path / "whole.h5")


@pytest.mark.slow
def test_dev_clips_end_to_end_with_mp3_and_44k_stereo(tmp_path, dev_clips, split_lists):
    out = tmp_path / "dev.h5"
    run_cli(
        "embed",
        str(dev_clips),
        "--out",
        str(out),
        "--model",
        "random-tiny",
        "--split",
        "gtzan-ff",
        "--split-dir",
        str(split_lists),
    )
    cache = EmbeddingCache(out)
    t = cache.tracks
    assert len(t) == 60 and set(t.status) == {"ok", "excluded"}
    ok = t[t.status == "ok"]
    assert all(tid.split(".")[0] == label for tid, label in zip(t.track_id, t.label, strict=True))
    assert cache.feature_shapes["encoder"] == (3 * len(ok), 3, 32)
    counts = cache.segments.groupby("track").size()
    assert set(counts) == {3} and set(counts.index) == set(ok.index)
    published = read_gtzan_ff(split_lists)
    assert all(
        published.get(tid, "excluded") == s for tid, s in zip(t.track_id, t.split, strict=True)
    )

    info = run_cli("info", str(out))
    assert "56 ok" in info.stdout and "3 layers x 32" in info.stdout and "excluded" in info.stdout

    # One clip re-encoded to MP3 and one resampled to 44.1 kHz stereo both decode and embed.
    import soxr

    audio, sr = sf.read(dev_clips / "jazz" / "jazz.00001.flac", dtype="float32")
    mixed = tmp_path / "mixed"
    (mixed / "jazz").mkdir(parents=True)
    sf.write(mixed / "jazz" / "jazz.00001.mp3", audio, sr)
    stereo = soxr.resample(audio, sr, 44_100)
    sf.write(mixed / "jazz" / "jazz.00002.wav", np.stack([stereo, 0.5 * stereo], 1), 44_100)
    run_cli("embed", str(mixed), "--out", str(tmp_path / "mixed.h5"), "--model", "random-tiny")
    m = EmbeddingCache(tmp_path / "mixed.h5")
    assert list(m.tracks.status) == ["ok", "ok"] and len(m.segments) == 6
    assert m.tracks.duration.between(29.9, 30.5).all()


def session_processes(sid: int) -> dict[int, str]:
    """The live processes of session `sid`, pid -> command line, read from /proc (no psutil)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone while we looked
            continue
        # Fields after "(comm)": state, ppid, pgrp, session, ...; a zombie has already exited.
        state, _, _, session = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(session) == sid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc")
def test_sigkill_leaves_no_decode_worker_or_resource_tracker_behind(tmp_path):
    data = make_label_folder(tmp_path / "data", per_label=4, seconds=10.0)
    out = tmp_path / "c.h5"
    # Its own session: every descendant keeps the session id after the parent is gone.
    proc = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", "embed", str(data), "--out", str(out)]
        + ["--model", "random-tiny", "--workers", "2", "--segment-seconds", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        # Killed once both workers run and decoding is under way (the store is open).
        while time.time() < deadline and proc.poll() is None:
            children = session_processes(proc.pid)
            workers = [p for p, cmd in children.items() if "spawn_main" in cmd]
            if len(workers) == 2 and Path(str(out) + ".partial").is_dir():
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) == 2, "the run ended before it could be killed"
        assert any("resource_tracker" in cmd for cmd in session_processes(proc.pid).values())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        left = session_processes(proc.pid)
        while left and time.time() < deadline:
            time.sleep(0.1)
            left = session_processes(proc.pid)
        assert not left, f"left behind after the parent was killed: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in session_processes(proc.pid):  # only this test's own processes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_run_stopped_after_its_last_shard_completes_on_re_run(tmp_path, monkeypatch):
    # Every block written, the merge not done (a kill between the two): the re-run has nothing
    # to embed, merges, says so, and succeeds; an earlier skipped file is reported again.
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.run import embed_dataset
    from wav2genre_cache.store.cache_writer import ShardStore

    data = make_label_folder(tmp_path / "data", per_label=3)
    (data / "low" / "empty.wav").write_bytes(b"")
    out = tmp_path / "cache.h5"

    def killed(self, order):
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardStore, "finalize", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(
            EmbedOptions(str(data), str(out), model="random-tiny", workers=0), progress=False
        )
    monkeypatch.undo()
    assert not out.exists() and list(Path(f"{out}.partial").glob("shard-*.h5"))
    again = run_cli("embed", str(data), "--out", str(out), "--model", "random-tiny", check=False)
    assert again.returncode == 0, again.stderr
    assert "Resuming: 7 of 7 tracks already embedded" in again.stderr
    assert "empty.wav" in again.stderr and "1 track(s) failed" in again.stderr
    assert (EmbeddingCache(out).tracks.status == "ok").sum() == 6
    strict = run_cli("embed", str(data), "--out", str(out), "--model", "random-tiny", "--strict",
                     check=False)  # fmt: skip
    assert strict.returncode == 1  # the finished cache's failure still counts for --strict


def test_without_a_terminal_progress_is_plain_lines(tmp_path, monkeypatch):
    # Under `> log` or CI no bar is drawn: a plain line at most every 10 s (here at every
    # event), and it moves between shards too, as the model reads each track of a block (a
    # block of 16 tracks took 16 minutes with augmented copies on a loaded two-core machine,
    # and its log said nothing meanwhile).
    import io
    import re

    from rich.console import Console

    import wav2genre_cache._io as io_helpers
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.run import embed_dataset

    monkeypatch.setattr(io_helpers, "PLAIN_PROGRESS_SECONDS", 0.0)
    data = make_label_folder(
        tmp_path / "data", labels=("a", "b", "c", "d"), per_label=9, seconds=1.0
    )
    log = io.StringIO()
    opts = EmbedOptions(str(data), str(tmp_path / "c.h5"), model="random-tiny", workers=0)
    embed_dataset(opts, console=Console(file=log, markup=False), progress=True)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("embed: ")]
    counts = [tuple(map(int, re.match(r"embed: (\d+)/36 tracks \((\d+) kept\)", line).groups()))
              for line in lines]  # fmt: skip
    assert counts == sorted(counts) and counts[-1] == (36, 36)
    before_first_shard = [done for done, kept in counts if kept == 0]
    assert before_first_shard == list(range(1, 17))  # each track of the first block, as read
    assert {kept for _, kept in counts} == {0, 16, 32, 36}  # and each shard written
    # Segments and rate count kept shards: none are said before the first (no "0.0 audio-s/s").
    assert all(line.endswith("(0 kept)") for line in lines[: len(before_first_shard)])
    assert all(line.endswith(" audio-s/s") for line in lines[len(before_first_shard) :])
