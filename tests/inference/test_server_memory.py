"""Refused uploads let go of their memory: 40 concurrent decompression bombs against a real server.

Each bomb is 4 hours of 16 kHz silence as FLAC (~0.7 MB) with its length cleared from the
header, so the server cannot refuse it from the header: it decodes until the 15-minute limit
(57.6 MB of float32 samples, plus a read block) and then refuses it (413). At most
--max-decodes (3) uploads are read and decoded at once, so the peak is bounded by 3 decodes,
not 40: 3 x 57.6 MB plus the read blocks, under 300 MB. A refusal holds no reference to its
buffers (neither through the exception's context nor its traceback), so after the 40 refusals
the server's RSS is back near where it was (within 100 MB: what the allocator keeps of the
freed pages). Once, 40 such refusals took a server from 626 MB to 3.2 GB and it stayed there.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from fakes import running_server, without_length

BOMBS = 40
PEAK_GROWTH_MB = 300  # 3 decodes at once x (57.6 MB of samples + a read block), and slack
KEPT_MB = 100  # RSS after the refusals, above the baseline before them


def silent_hours(hours: float, rate: int = 16_000) -> bytes:
    """FLAC of `hours` of mono silence: ~0.18 MB an hour at 16 kHz."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(rate * 600, np.int16)
        for _ in range(int(hours * 6)):
            f.write(block)
    return buf.getvalue()


def memory_mb(pid: int, field: str) -> float:
    """A /proc/PID/status memory figure (VmRSS, VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def post(url: str, content: bytes) -> httpx.Response:
    return httpx.post(url + "/api/predict", files={"file": ("bomb.flac", content)}, timeout=120)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return without_length(silent_hours(4))


def test_forty_concurrent_bombs_are_refused_and_their_memory_freed(dev_bundle, bomb, tmp_path):
    assert len(bomb) < 1.5 * 2**20  # small on the wire: the upload limit does not stop it
    with running_server(dev_bundle, tmp_path / "server.log") as server:
        pid = server.proc.pid
        assert post(server.url, bomb).status_code == 413  # warm: the decoder's first use
        baseline = memory_mb(pid, "VmRSS")
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS, so the peak read below is these requests'
        except OSError as exc:
            pytest.skip(f"cannot reset the server's peak RSS ({exc})")
        start = time.perf_counter()
        with ThreadPoolExecutor(BOMBS) as pool:
            answers = list(pool.map(lambda _: post(server.url, bomb), range(BOMBS)))
        seconds = time.perf_counter() - start
        peak = memory_mb(pid, "VmHWM") - baseline
        kept = memory_mb(pid, "VmRSS") - baseline
        assert [a.status_code for a in answers] == [413] * BOMBS, answers[0].text
        assert all("the limit is 15 minutes" in a.json()["detail"] for a in answers)
        print(f"{BOMBS} bombs in {seconds:.1f} s: peak +{peak:.0f} MB, after +{kept:.0f} MB")
        assert peak < PEAK_GROWTH_MB, (peak, kept)
        assert kept < KEPT_MB, (peak, kept)
        assert httpx.get(server.url + "/api/health").status_code == 200
