"""`serve --workers N` and `serve --runtime onnx` as real processes on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import run_cli
from fakes import free_port, running_server


def children(pid: int) -> list[int]:
    """The live child processes of pid (from /proc; a zombie counts as gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening_inodes(port: int) -> dict[str, str]:
    """{inode: local address} of the TCP sockets listening on port (/proc/net/tcp and tcp6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found[fields[9]] = address
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets pid holds open."""
    inodes = set()
    for fd in (Path("/proc") / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def workers_of(server) -> list[int]:
    """The server's worker processes (multiprocessing's resource tracker is not one)."""
    return [
        p
        for p in children(server.pid)
        if "resource_tracker" not in (Path("/proc") / str(p) / "cmdline").read_text()
    ]


def post(url: str, path: Path) -> httpx.Response:
    return httpx.post(
        url + "/api/predict", files={"file": (path.name, path.read_bytes())}, timeout=120
    )


@contextlib.contextmanager
def detached_server(bundle: Path, log: Path, *options: str):
    """serve --workers 2 in its own process group (Ctrl-C goes to the group), every worker up:
    its process and URL; whatever is left of the group is ended afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wav2genre_cache", "serve", "--bundle", str(bundle)]
        + ["--port", str(port), "--workers", "2", *options],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120  # two models loading on a busy 2-core box
        while log.read_text().count("Application startup complete") < 2:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"server did not start: {log.read_text()}")
            time.sleep(0.2)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_workers_listen_on_the_one_loopback_socket_and_answer_alike(
    dev_bundle, dev_clips, tmp_path
):
    clip = sorted(dev_clips.glob("jazz/*.flac"))[0]
    with detached_server(dev_bundle, tmp_path / "server.log") as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(url, clip), range(4)))
        assert [a.status_code for a in answers] == [200] * 4, answers[0].text
        assert len({a.json()["label"] for a in answers}) == 1
        listening = listening_inodes(port)
        assert list(listening.values()) == ["0100007F"]  # one socket, on 127.0.0.1 only
        workers = workers_of(proc)
        assert len(workers) == 2
        for pid in workers:  # each worker answers on exactly that socket
            assert set(listening) <= socket_inodes(pid)


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_ctrl_c_stops_every_worker_and_exits_130(dev_bundle, tmp_path):
    log = tmp_path / "server.log"
    with detached_server(dev_bundle, log) as (proc, _):
        workers = children(proc.pid)  # and the resource tracker
        assert len(workers) == 3
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(15) == 130, log.read_text()
        assert wait_gone(workers, 5) == []
        text = log.read_text()
        assert "interrupted" in text and "Traceback" not in text, text


def test_no_worker_outlives_a_killed_parent(dev_bundle, tmp_path):
    with detached_server(dev_bundle, tmp_path / "server.log") as (proc, url):
        workers = children(proc.pid)  # the resource tracker too: it must not stay either
        assert len(workers) == 3
        proc.kill()  # SIGKILL: the parent cannot stop anything itself
        proc.wait(5)
        assert wait_gone(workers, 10) == [], (tmp_path / "server.log").read_text()
        with pytest.raises(httpx.ConnectError):  # nobody listens on the port any more
            httpx.get(url + "/api/health", timeout=2)


@pytest.fixture(scope="module")
def layer1_bundle(dev_bundle, tmp_path_factory) -> Path:
    """A logreg bundle at layer 1 of the dev bundle's cache (its own best layer may be 0)."""
    out = tmp_path_factory.mktemp("layer1") / "heads"
    cache = dev_bundle.parent / "cache.h5"
    run_cli("train-heads", str(cache), "--out", str(out), "--heads", "logreg", "--layers", "1")
    return out / "best"


@pytest.fixture(scope="module")
def onnx_export(layer1_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "export"
    run_cli("export", str(layer1_bundle), "--onnx", str(out))
    return out


def test_onnx_runtime_serves_the_labels_torch_serves(
    layer1_bundle, onnx_export, dev_clips, tmp_path
):
    clips = [sorted(dev_clips.glob(f"{g}/*.flac"))[0] for g in ("blues", "metal", "pop")]
    with running_server(layer1_bundle, tmp_path / "torch.log") as torch_server:
        expected = [post(torch_server.url, c).json() for c in clips]
    with running_server(onnx_export, tmp_path / "onnx.log", "--runtime", "onnx") as server:
        model = httpx.get(server.url + "/api/model").json()
        assert model["runtime"] == "onnx" and model["backbone"] == "random-tiny"
        assert "<html" in httpx.get(server.url + "/").text.lower()  # the page, as with torch
        answers = [post(server.url, c).json() for c in clips]
    for got, want in zip(answers, expected, strict=True):
        assert got["label"] == want["label"] and len(got["timeline"]) == len(want["timeline"])
        for g, w in zip(got["top"], want["top"], strict=True):
            assert g["label"] == w["label"] and g["probability"] == pytest.approx(
                w["probability"], abs=1e-3
            )
        for g, w in zip(got["timeline"], want["timeline"], strict=True):
            for label, p in w["probabilities"].items():
                assert g["probabilities"][label] == pytest.approx(p, abs=1e-3)
