"""Whisper's 30 s windows: which segments fill each, and their log-mel, in numpy alone.

Torch-free on purpose: the decode workers import this to make a track's windows and log-mel
beside decoding (where the machine has cores to spare), and the model's side (frontends.py)
makes them with the same code otherwise, so `embed`, `predict` and `serve` feed the encoder the
same numbers whichever process computed them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

# What one segment of a window contributes: (segment index in its track, first output frame, end
# frame); an end of None means every frame of the window.
Span = tuple[int, int, int | None]
Window = tuple[np.ndarray, list[Span]]  # the window's audio (1-D, 16 kHz) or log-mel, its segments


@dataclass(frozen=True)
class WhisperWindows:
    """How segments share Whisper windows (alone | packed) and how a window becomes log-mel."""

    window: str  # "alone": one zero-padded window per segment; "packed": floor(30 s / segment)
    window_samples: int  # 480,000: 30 s at 16 kHz
    frames: int  # encoder frames per window (1,500: 50 a second)
    n_fft: int
    hop_length: int
    mel_filters: np.ndarray  # [n_fft // 2 + 1, mels], the extractor's own

    @property
    def frame_samples(self) -> int:
        """Samples per encoder frame (320)."""
        return self.window_samples // self.frames

    def per_window(self, length: int) -> int:
        """Segments per window: one alone, else as many whole segments as fit (floor)."""
        return 1 if self.window == "alone" else max(1, self.window_samples // length)

    def windows(self, samples: np.ndarray, starts: list[int], length: int) -> Iterator[Window]:
        """Consecutive segments, `per_window` at a time, placed back to back from the start.

        Packed segments are copied in as they are: with a hop shorter than the segment their
        overlap appears twice, so each segment's frames still hold exactly its own audio.
        One window at a time: a one-hour file's packed copies all at once cost 250 MB more.
        """
        if length > self.window_samples:
            raise ValueError(f"a {length / 16_000:g} s segment is longer than a window")
        k = self.per_window(length)
        for g in range(0, len(starts), k):
            group = starts[g : g + k]
            audio = (
                samples[group[0] : group[0] + length]
                if len(group) == 1
                else np.concatenate([samples[s : s + length] for s in group])
            )
            yield audio, [(g + j, *self._frames(j * length, length)) for j in range(len(group))]

    def _frames(self, offset: int, length: int) -> tuple[int, int]:
        """The encoder frames that hold samples [offset, offset + length) of a window."""
        first = offset // self.frame_samples
        end = min(self.frames, math.ceil((offset + length) / self.frame_samples))
        return first, end

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel [mels, mel frames] of one window's audio, zero-padded to the whole window.

        WhisperFeatureExtractor's steps (centred periodic-Hann STFT with reflect padding, power
        without the last frame, its mel filters, log10 floored 8 below the window's maximum,
        (x + 4) / 4), in float32 numpy: within 1e-5 of transformers' torch path (a test).
        """
        x = np.zeros(self.window_samples, np.float32)
        x[: len(audio)] = audio
        pad = self.n_fft // 2
        x = np.pad(x, pad, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop_length][:-1]
        # scipy's pocketfft keeps float32 (numpy's rfft took 2-3x as long here); one thread, as
        # in a decode worker, so every process computes the same numbers the same way.
        spectrum = scipy.fft.rfft(frames * _hann(self.n_fft), axis=-1, workers=1)
        power = spectrum.real**2 + spectrum.imag**2
        # One BLAS thread, in every process: a dozen workers each starting all of the machine's
        # BLAS threads, or the model's process waking them beside torch's own, only contend.
        with _blas_controller().limit(limits=1, user_api="blas"):
            mel = power @ self.mel_filters.astype(np.float32)  # [frames, mels]
        log_spec = np.log10(np.maximum(mel, 1e-10)).T
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).astype(np.float32)

    def log_mel_windows(self, samples: np.ndarray, starts: list[int], length: int) -> list[Window]:
        """A track's windows as log-mel, each with its segments' spans (what a worker sends)."""
        return [(self.log_mel(a), spans) for a, spans in self.windows(samples, starts, length)]


@dataclass
class TrackWindows:
    """A track's encoder inputs, segmented once: its windows and how many segments they hold.

    The windows are audio (made as the model reads them) or log-mel made in a decode worker.
    """

    n_segments: int
    windows: Iterable[Window]


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries (made once: it inspects the process)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _hann(n: int) -> np.ndarray:
    """torch.hann_window(n) (periodic), in float32."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
