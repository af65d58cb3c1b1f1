"""`serve`: a web page and JSON API where a person uploads a song and sees its genre over time."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from wav2genre_cache.audio.decode import decode_bytes
from wav2genre_cache.errors import AudioError, AudioTooLong, OptionError
from wav2genre_cache.inference.predict import check_duration

if TYPE_CHECKING:
    from wav2genre_cache.inference.onnx_runtime import OnnxPredictor
    from wav2genre_cache.inference.predict import Predictor

STATIC = Path(str(files("wav2genre_cache.inference") / "static"))
# uvicorn's own error logger: its lines come out formatted like the server's.
log = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class ServeOptions:
    """Where the server listens and what it accepts: the `serve` command's options."""

    host: str = "127.0.0.1"  # loopback: only this machine reaches the page unless told otherwise
    port: int = 8000
    max_upload_mb: float = 50  # a larger upload is refused (413) while it streams in
    max_minutes: float = 15  # longer audio is refused as soon as decoding passes it
    max_decodes: int = 3  # uploads decoded and held in memory at once; the others wait
    device: str = "auto"  # where the model runs: auto, cpu or cuda
    workers: int = 1  # processes, each with its own model, sharing the listening socket
    max_batch: int = 1  # decoded uploads waiting for the model answered by one model call
    runtime: str = "torch"  # torch: the bundle in PyTorch; onnx: an export in onnxruntime

    def __post_init__(self):
        for name in ("max_upload_mb", "max_minutes", "max_decodes", "workers", "max_batch"):
            if not getattr(self, name) > 0:
                flag = "--" + name.replace("_", "-")
                raise OptionError(f"{flag} {getattr(self, name)}: must be above 0")
        if self.runtime not in ("torch", "onnx"):
            raise OptionError(f"--runtime {self.runtime!r}: use torch or onnx")


class UploadLimit:
    """ASGI wrapper that refuses an upload body over `limit` bytes while it streams in.

    A Content-Length over the limit is refused before any byte is read; a body without one is
    counted as it arrives and cut off at the limit, so nobody can fill memory or disk.
    """

    def __init__(self, app, limit: int, path: str = "/api/predict"):
        self.app, self.limit, self.path = app, limit, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"detail": self._message()}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._message())
            return message

        return await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"upload too large: the limit is {self.limit / 2**20:g} MB"


class ModelQueue:
    """One model thread; the uploads that wait for it while it works go in together next.

    Requests queue for the model instead of fighting over the cores; when it frees, every waiting
    upload with the same top_k (up to max_batch) is answered by one predict_waveforms call, so a
    busy server makes fewer, larger model calls and an idle one adds no wait.
    """

    def __init__(self, predictor: Predictor | OnnxPredictor, max_batch: int):
        self.predictor, self.max_batch = predictor, max_batch
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wav2genre-model")
        self.waiting: list[tuple[np.ndarray, int, asyncio.Future]] = []
        self.draining: asyncio.Task | None = None
        self.calls = 0

    async def predict(self, samples: np.ndarray, top_k: int) -> dict:
        """The prediction of one decoded upload, from the next model call that takes it."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((samples, top_k, future))
        if self.draining is None or self.draining.done():
            self.draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            k = self.waiting[0][1]
            batch = [w for w in self.waiting if w[1] == k][: self.max_batch]
            self.waiting = [w for w in self.waiting if all(w is not b for b in batch)]
            batch = [w for w in batch if not w[2].done()]  # a client that left is skipped
            if not batch:
                continue
            self.calls += 1
            waveforms = [samples for samples, _, _ in batch]
            try:
                results = await loop.run_in_executor(
                    self.thread, self.predictor.predict_waveforms, waveforms, k
                )
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} predictions for {len(batch)} uploads")
            except Exception as exc:  # each waiting request answers with it (500), none waits on
                results = [exc] * len(batch)
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            del waveforms, batch, results


def create_app(
    predictor: Predictor | OnnxPredictor, options: ServeOptions = ServeOptions()
) -> UploadLimit:
    """The FastAPI application around one loaded predictor, wrapped in the upload limit."""
    max_upload_mb, max_minutes = options.max_upload_mb, options.max_minutes
    app = FastAPI(title="wav2genre", docs_url="/api/docs", openapi_url="/api/openapi.json")
    model_queue = ModelQueue(predictor, options.max_batch)
    # At most max_decodes uploads hold decoded audio at once, from reading the upload's bytes to
    # the model's answer; each holds at most max_minutes of 16 kHz samples plus one read block
    # (decode_bytes stops there). So N concurrent uploads of compressed silence queue here
    # instead of each taking its full allowance at the same time.
    decode_slots = asyncio.Semaphore(options.max_decodes)
    app.state.served = 0

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "served": app.state.served,
            "model_calls": model_queue.calls,
            "pid": os.getpid(),
        }

    @app.get("/api/model")
    async def model() -> dict:
        return {
            **predictor.describe(),
            "limits": {"max_upload_mb": max_upload_mb, "max_minutes": max_minutes},
        }

    @app.post("/api/predict")
    async def predict(request: Request, top_k: int = 3) -> dict:
        start = time.perf_counter()
        upload = await _form_file(request)
        name = Path(upload.filename or "upload").name  # for messages only, never a path
        uploaded = time.perf_counter()
        async with decode_slots:  # so "decode" time includes any wait for a slot
            samples = await _decode_upload(upload, name, max_minutes * 60)
            if await request.is_disconnected():
                raise HTTPException(499, "client disconnected")  # nobody is waiting: skip the model
            decoded = time.perf_counter()
            result = await model_queue.predict(samples, max(1, min(top_k, 50)))
            del samples
            done = time.perf_counter()
            app.state.served += 1
            return {
                "file": name,
                **result,
                "timings_ms": _timings_ms(start, uploaded, decoded, done),
            }

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return UploadLimit(app, int(max_upload_mb * 2**20))


async def _form_file(request: Request) -> UploadFile:
    """The upload in form field 'file': 499 if the client leaves during it, 400 if there is none."""
    try:
        form = await request.form(max_files=1, max_fields=4)
    except ClientDisconnect:
        # Routine (a closed tab, a lost connection): one line, not an ASGI traceback.
        client = f"{request.client.host}:{request.client.port}" if request.client else "?"
        log.warning("%s: client disconnected during the upload; nothing to answer", client)
        raise HTTPException(499, "client disconnected") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "no file uploaded: send the audio as multipart form field 'file'")
    return upload


async def _decode_upload(upload: UploadFile, name: str, max_seconds: float) -> np.ndarray:
    """The upload decoded to 16 kHz samples: 422 if it is empty or not audio, 413 if too long."""
    data = await upload.read()
    await upload.close()
    if not data:
        raise HTTPException(422, f"{name}: empty file (0 bytes)")
    try:
        # The duration limit bounds the decode itself (header first, then while streaming).
        samples = await run_in_threadpool(decode_bytes, data, name, max_seconds)
        check_duration(samples, name, max_seconds)
    except AudioError as exc:
        refused = HTTPException(413 if isinstance(exc, AudioTooLong) else 422, str(exc))
    else:
        return samples  # the upload's bytes are freed here, before the model runs
    # Raised outside the handler, with the upload's bytes let go: the refusal carries neither
    # them nor the decoder's frames (through the AudioError as its context) into the framework.
    data = None  # noqa: F841
    raise refused


def _timings_ms(start: float, uploaded: float, decoded: float, done: float) -> dict:
    """How long each step of one prediction took, in milliseconds."""
    return {
        "upload": round(1000 * (uploaded - start), 1),
        "decode": round(1000 * (decoded - uploaded), 1),
        "model": round(1000 * (done - decoded), 1),
        "total": round(1000 * (done - start), 1),
    }


def load_predictor(bundle: str | Path, options: ServeOptions, threads: int = 0):
    """The bundle's Predictor (torch), or an export folder's OnnxPredictor (--runtime onnx).

    threads: the model's CPU threads (0: the library's default, one per core).
    """
    if options.runtime == "onnx":
        from wav2genre_cache.inference.onnx_runtime import OnnxPredictor

        return OnnxPredictor(bundle, threads=threads)
    from wav2genre_cache.inference.predict import Predictor

    if threads:
        import torch

        torch.set_num_threads(threads)
    return Predictor(bundle, device=options.device)
