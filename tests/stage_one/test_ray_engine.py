"""--engine ray: the local engine's cache from Ray Data, faults survived, loopback only.

Every Ray runtime here is started by the engine itself without --ray-address, which sets
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (set here too, for the subprocesses): every Ray server and
connection stays on 127.0.0.1, as the loopback test checks.
"""

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli, write_audio
from processes import command_line, descendants

from wav2genre_cache.store.cache import EmbeddingCache

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is first imported
pytest.importorskip("ray", reason="Ray is an optional dependency: pip install '.[ray]'")

# One worker runs them all, one after another: two Ray runtimes at once on two cores slowed a
# killed actor's recovery fivefold (29 s alone, 147 s beside another runtime).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def assert_same_cache(local: Path, ray: Path) -> None:
    """Same tracks, segments, views and failures; features equal within float16 rounding."""
    a, b = EmbeddingCache(local), EmbeddingCache(ray)
    assert a.config == b.config
    assert a.tracks.equals(b.tracks)
    assert a.segments.equals(b.segments)
    assert a.feature_names == b.feature_names
    for name in a.feature_names:
        fa, fb = a.features(name), b.features(name)
        # One float16 step of the larger value: batch order may round the last bit differently.
        step = np.spacing(np.maximum(np.abs(fa), np.abs(fb)).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(fa - fb) <= step), name


def embed(
    data: Path, out: Path, *extra: str, engine: str = "local", model: str = "random-tiny"
) -> subprocess.CompletedProcess:
    return run_cli("embed", str(data), "--out", str(out), "--model", model, "--engine", engine,
                   *extra)  # fmt: skip


@pytest.fixture(scope="module")
def dev_local_cache(tmp_path_factory, dev_clips) -> Path:
    """The local engine's cache of the 60 real clips, the reference for the Ray runs."""
    out = tmp_path_factory.mktemp("local") / "cache.h5"
    embed(dev_clips, out)
    return out


def test_the_ray_engine_writes_the_local_engines_cache_of_the_real_clips_on_loopback_only(
    tmp_path, dev_clips, dev_local_cache
):
    run = start_embed(dev_clips, tmp_path / "cache.h5")
    seen = watch_sockets(run)
    stderr = run.stderr.read()
    assert run.returncode == 0, stderr
    assert_same_cache(dev_local_cache, tmp_path / "cache.h5")
    assert "60/60 tracks" in stderr and "audio-s/s" in stderr  # one progress line
    # Every Ray server listened, and every connection went, on 127.0.0.1 only.
    if Path("/proc/net/tcp").exists():  # Linux's /proc/net; elsewhere nothing was watched
        assert len(seen) > 10  # Ray's servers and their connections were watched
        listening = "0A"
        outside = {
            who: (local, remote)
            for who, (local, remote, state) in seen.items()
            if not ipaddress.ip_address(local).is_loopback
            or (state != listening and not ipaddress.ip_address(remote).is_loopback)
        }
        assert outside == {}
    # The Parquet shards are kept, and read on their own as two tables.
    import pyarrow.dataset as pads

    from wav2genre_cache.store.parquet import tensor_column_to_numpy

    shards = tmp_path / "cache.h5.shards"
    segments = pads.dataset(sorted(shards.glob("segments-*.parquet"))).to_table()
    tracks = pads.dataset(sorted(shards.glob("tracks-*.parquet"))).to_table()
    cache = EmbeddingCache(tmp_path / "cache.h5")
    assert tracks.num_rows == len(cache.tracks) and segments.num_rows == len(cache.segments)
    features = tensor_column_to_numpy(segments["encoder"])
    assert (
        features.dtype == np.float32 and features.shape[1:] == cache.feature_shapes["encoder"][1:]
    )
    np.testing.assert_array_equal(features.astype(np.float16), cache.features("encoder"))
    # Run again: the cache is complete; nothing is done.
    again = embed(dev_clips, tmp_path / "cache.h5", engine="ray")
    assert "already complete" in again.stderr


def broken_set(root: Path, dev_clips: Path | None) -> Path:
    """Six playable tracks (real clips where there are any) and five broken files."""
    for i, label in enumerate(("low", "high")):
        clips = sorted((dev_clips / ("blues", "metal")[i]).glob("*.flac"))[:3] if dev_clips else []
        for j in range(3):
            target = root / label / f"{label}_{j}.flac"
            target.parent.mkdir(parents=True, exist_ok=True)
            if clips:
                shutil.copy(clips[j], target)
            else:
                write_audio(target, 12.0, freq=200.0 * (i + 1) * (1 + 0.05 * j), seed=j)
    (root / "low" / "empty.wav").write_bytes(b"")
    (root / "low" / "text.mp3").write_text("not audio at all\n" * 50)
    (root / "low" / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(2000))
    sf.write(root / "high" / "silence.wav", np.zeros(32_000, np.float32), 16_000)
    write_audio(root / "high" / "tiny.wav", 0.4)
    return root


def test_broken_files_and_a_whisper_encoder_give_the_local_engines_cache(
    tmp_path, dev_clips, whisper_dir
):
    # With every per-track option the decode tasks carry (augmented copies of training tracks,
    # hand-crafted features beside the encoder's), and a log-mel front end with packed windows:
    # consecutive segments share one 30 s window.
    data = broken_set(tmp_path / "data", dev_clips)
    extra = ("--segment-seconds", "5", "--features", "encoder,handcrafted",
             "--augment", "noise", "--augment-copies", "1")  # fmt: skip
    local = embed(data, tmp_path / "local.h5", *extra, model=whisper_dir)
    ray = embed(data, tmp_path / "ray.h5", *extra, engine="ray", model=whisper_dir)
    assert_same_cache(tmp_path / "local.h5", tmp_path / "ray.h5")
    cache = EmbeddingCache(tmp_path / "ray.h5")
    assert cache.attrs["window"] == "packed"
    assert (cache.tracks.status == "failed").sum() == 4
    assert set(cache.segments.view) == {0, 1}
    for name in ("empty.wav", "text.mp3", "corrupt.flac", "tiny.wav"):
        said = [line for line in ray.stderr.splitlines() if name in line and "skipped" in line]
        assert said and said == [
            line for line in local.stderr.splitlines() if name in line and "skipped" in line
        ], name


def test_hand_crafted_features_alone_need_no_encoder_actors(tmp_path, dev_clips):
    data = broken_set(tmp_path / "data", dev_clips)
    embed(data, tmp_path / "local.h5", "--features", "handcrafted")
    embed(data, tmp_path / "ray.h5", "--features", "handcrafted", engine="ray")
    assert_same_cache(tmp_path / "local.h5", tmp_path / "ray.h5")
    assert EmbeddingCache(tmp_path / "ray.h5").feature_names == ["handcrafted"]


def wait_for(condition, seconds: float, what: str, proc: subprocess.Popen):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stderr.read()}")
        time.sleep(0.05)  # each poll reads every process's /proc entry
    raise AssertionError(f"no {what} within {seconds} s")


def start_embed(data: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", "embed", str(data), "--out", str(out),
         "--model", "random-tiny", "--engine", "ray"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_decode_worker_and_an_encoder_actor_killed_mid_run_lose_nothing(
    tmp_path, dev_clips, dev_local_cache
):
    run = start_embed(dev_clips, tmp_path / "cache.h5")

    def running(name: str) -> int | None:
        return next((p for p in descendants(run.pid) if name in command_line(p)), None)

    try:
        # A decode task's worker process, killed while it decodes: Ray retries the task.
        os.kill(wait_for(lambda: running("decode_task"), 300, "decode task", run), signal.SIGKILL)
        actor = wait_for(lambda: running("EncoderActor"), 300, "encoder actor", run)
        wait_for(lambda: list((tmp_path / "cache.h5.shards").glob("tracks-*")), 300, "shard", run)
        # The encoder actor, between batches or in one: Ray does not restart it (restarts
        # off); the engine runs the blocks not written yet again on a fresh pipeline.
        os.kill(actor, signal.SIGKILL)
        assert run.wait(timeout=600) == 0, run.stderr.read()
        stderr = run.stderr.read()
    finally:
        run.kill()
        run.wait()
    retried = [line for line in stderr.splitlines() if "an encoder actor died (" in line]
    assert len(retried) == 1 and re.search(
        r"embedding the [1-3] blocks left again, attempt 2 of 3$", retried[0]
    ), stderr
    assert_same_cache(dev_local_cache, tmp_path / "cache.h5")


def test_a_driver_killed_with_kill_9_resumes_on_re_run(tmp_path, dev_clips, dev_local_cache):
    out = tmp_path / "cache.h5"
    run = start_embed(dev_clips, out)
    try:
        wait_for(lambda: list((tmp_path / "cache.h5.shards").glob("tracks-*")), 300, "shard", run)
        ray_processes = descendants(run.pid)
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        run.kill()
        run.wait()
    # The Ray runtime the killed driver started goes with it, at once: its watchdog ends the
    # agents that would otherwise try for 60 s to report to the dead GCS (Ray's own timeout).
    deadline = time.time() + 10
    while time.time() < deadline and any(command_line(p) for p in ray_processes):
        time.sleep(0.2)
    assert [command_line(p) for p in ray_processes if command_line(p)] == []
    assert not out.exists()
    done = len(list((tmp_path / "cache.h5.shards").glob("tracks-*")))
    assert 1 <= done < 4  # 60 tracks: 4 blocks of 16; the kill came between
    # Other settings on the unfinished run are refused, naming what differs.
    other = run_cli("embed", str(dev_clips), "--out", str(out), "--model", "random-tiny",
                    "--engine", "ray", "--segment-seconds", "5", check=False)  # fmt: skip
    assert other.returncode == 2 and "segment_seconds" in other.stderr
    # Resumed with another batch size, so blocks of 32 tracks, not 16: tracks are matched by id.
    resumed = embed(dev_clips, out, "--batch-size", "32", engine="ray")
    skipped = 32 * (16 * done // 32)  # the 32-track blocks whose every track is done
    if skipped:
        assert f"Resuming: {skipped} of 60 tracks already embedded" in resumed.stderr
    else:
        assert "Resuming" not in resumed.stderr
    assert_same_cache(dev_local_cache, out)


def tcp_sockets() -> dict[int, tuple[str, str, str]]:
    """Every TCP socket of this machine: inode -> (local address, remote address, state)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            found[int(fields[9])] = (_address(fields[1]), _address(fields[2]), fields[3])
    return found


def _address(field: str) -> str:
    hex_ip = field.split(":")[0]
    raw = bytes.fromhex(hex_ip)
    # /proc writes each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def watch_sockets(run: subprocess.Popen) -> dict[str, tuple[str, str, str]]:
    """Until the run ends: every TCP socket its processes held (local, remote, state)."""
    seen: dict[str, tuple[str, str, str]] = {}
    try:
        while run.poll() is None:
            sockets = tcp_sockets()
            for pid in {run.pid, *descendants(run.pid)}:
                for inode in socket_inodes(pid):
                    if inode in sockets:
                        seen[f"{pid} {command_line(pid)[:60]} {inode}"] = sockets[inode]
            time.sleep(0.1)
    finally:
        run.kill()
        run.wait()
    return seen


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    from rich.console import Console

    from wav2genre_cache.errors import OptionError
    from wav2genre_cache.stage_one.ray_runtime import start_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    with pytest.raises(OptionError, match=r"pip install 'wav2genre-cache\[ray\]'"):
        start_ray(None, Console(stderr=True))


def test_actors_that_load_another_model_stop_the_run_with_a_clear_message(tmp_path, dev_clips):
    from dataclasses import replace

    from rich.console import Console

    from wav2genre_cache.data.catalogue import read_source
    from wav2genre_cache.data.splits import assign_splits
    from wav2genre_cache.encoders.backbone import load_backbone
    from wav2genre_cache.errors import RayEngineError
    from wav2genre_cache.stage_one.options import EmbedOptions
    from wav2genre_cache.stage_one.ray_engine import embed_on_ray, plan_ray_run

    opts = EmbedOptions(data=str(dev_clips), out=str(tmp_path / "c.h5"), model="random-tiny")
    tracks = assign_splits(read_source(dev_clips, "gtzan").tracks, "random", 0)[:4]
    run = plan_ray_run(opts, "gtzan", load_backbone("random-tiny", "cpu", "float32"), False)
    # As if the driver had checked a model the actors will not load (a GPU head, CPU workers).
    run = replace(run, spec=replace(run.spec, identity=(*run.spec.identity[:-1], "torch.float64")))
    with pytest.raises(RayEngineError, match="not the driver's") as error:
        embed_on_ray(run, tracks, Console(stderr=True), progress=False)
    assert "re-run the same command to resume" in str(error.value)
    assert not (tmp_path / "c.h5").exists()
