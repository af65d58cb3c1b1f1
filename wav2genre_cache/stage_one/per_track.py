"""Per-track work in the decode workers: augmented copies, hand-crafted features, Whisper log-mel.

The encoder's Whisper windows and their log-mel are made here where that pays (see
blocks.logmel_in_workers). The hand-crafted features are the paper's traditional baseline, computed with librosa. All of
this runs in worker processes beside decoding, so the model never waits on it, and imports no
torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from wav2genre_cache.audio.augment import augment_track
from wav2genre_cache.audio.decode import (
    SAMPLE_RATE,
    fetch_to_temp,
    is_uri,
    segment_samples,
    segment_track,
    track_duration,
    try_load_track,
)
from wav2genre_cache.audio.decode_stream import AudioHash, decode_blocks
from wav2genre_cache.audio.logmel import log_mel_image, logmel_frames, mel_filters
from wav2genre_cache.audio.stream_segments import (
    StreamedSegments,
    chunk_seconds,
    hashed,
    is_long,
    per_chunk,
)
from wav2genre_cache.audio.whisper_windows import TrackWindows, WhisperWindows
from wav2genre_cache.errors import AudioError

N_MFCC = 20


# Name and width of each block of the vector, in order (documented in the cache's attributes).
HANDCRAFTED_BLOCKS = (
    ("mfcc_mean", N_MFCC),
    ("mfcc_std", N_MFCC),
    ("mfcc_delta_mean", N_MFCC),
    ("mfcc_delta_std", N_MFCC),
    ("chroma_mean", 12),
    ("chroma_std", 12),
    ("contrast_mean", 7),
    ("contrast_std", 7),
    ("centroid", 2),
    ("bandwidth", 2),
    ("rolloff", 2),
    ("zcr", 2),
    ("rms", 2),
    ("tempo", 1),
)
HANDCRAFTED_DIM = sum(width for _, width in HANDCRAFTED_BLOCKS)


def handcrafted_features(segment: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One segment's MFCCs (+deltas), chroma, spectral contrast, centroid, bandwidth, roll-off,
    zero-crossing rate, RMS (mean and std of each) and tempo: a float32 vector of HANDCRAFTED_DIM."""
    import librosa

    y = np.asarray(segment, dtype=np.float32)
    n_fft, hop = 2048, 512
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop))
    power = S**2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=128)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)
    delta = (
        librosa.feature.delta(mfcc, mode="nearest") if mfcc.shape[1] >= 3 else np.zeros_like(mfcc)
    )
    chroma = librosa.feature.chroma_stft(S=power, sr=sr, n_fft=n_fft, tuning=0.0)
    # Spectral contrast bands must stay below Nyquist at 16 kHz: 6 bands from 100 Hz.
    contrast = librosa.feature.spectral_contrast(S=S, sr=sr, n_fft=n_fft, fmin=100.0, n_bands=6)
    centroid = librosa.feature.spectral_centroid(S=S, sr=sr)
    bandwidth = librosa.feature.spectral_bandwidth(S=S, sr=sr)
    rolloff = librosa.feature.spectral_rolloff(S=S, sr=sr)
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)
    rms = librosa.feature.rms(S=S, frame_length=n_fft)
    onset = librosa.onset.onset_strength(S=librosa.power_to_db(mel), sr=sr)
    tempo = librosa.feature.tempo(onset_envelope=onset, sr=sr, hop_length=hop)
    parts = [
        mfcc.mean(1),
        mfcc.std(1),
        delta.mean(1),
        delta.std(1),
        chroma.mean(1),
        chroma.std(1),
        contrast.mean(1),
        contrast.std(1),
    ]
    for f in (centroid, bandwidth, rolloff, zcr, rms):
        parts.append(np.array([f.mean(), f.std()]))
    parts.append(np.atleast_1d(tempo).astype(np.float32)[:1])
    out = np.concatenate(parts).astype(np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # silence gives NaN chroma


def logmel_features(segment: np.ndarray, frames: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A segment's log-mel spectrogram (dB), N_MELS x frames flattened to one float32 row.

    A segment shorter than a whole one (a short track) is padded with the lowest level.
    """
    return log_mel_image(segment, frames, mel_filters(sr))


@dataclass(frozen=True)
class PrepareOptions:
    """What the decode workers do to each track besides decoding (picklable)."""

    segment_seconds: float
    hop_seconds: float | None
    handcrafted: bool = False
    logmel: bool = False
    augment: tuple[str, ...] = ()
    copies: int = 0
    seed: int = 0
    noise_dir: str | None = None
    # Set where the encoder's Whisper windows and their log-mel are made here, not on the
    # model's thread (blocks.logmel_in_workers); the audio then stays in the worker.
    windows: WhisperWindows | None = None
    # A track longer than this (its header says) is streamed: prepared here a chunk at a time,
    # and decoded again, a chunk at a time, on the model's side (PreparedTrack.streamed); None:
    # every track whole (the Ray engine's decode tasks). An augmented training track is never
    # streamed: pitch shift, time stretch and noise work on the whole waveform.
    stream_seconds: float | None = None


@dataclass
class PreparedTrack:
    """A decoded track, its augmented copies (views 1..K) and per-view hand-crafted features."""

    views: list[np.ndarray]  # the audio of each view; empty where `inputs` holds them instead
    duration: float
    content_hash: str
    segments: list[tuple[list[int], int]]  # per view: its segment starts and length (samples)
    handcrafted: list[np.ndarray] | None = None  # per view: [segments, 1, HANDCRAFTED_DIM]
    logmel: list[np.ndarray] | None = None  # per view: [segments, 1, N_MELS * frames]
    inputs: list[TrackWindows] | None = None  # per view: the encoder's windows, made here
    # No audio here: the track (its original view alone) is long, and the model's side decodes
    # its file again as it embeds it; what it decodes must hash to content_hash.
    streamed: bool = False


def prepare_track(
    item: tuple[str, str, bool], plan: PrepareOptions
) -> tuple[PreparedTrack | None, str]:
    """Worker job for (path, track id, is training track): decode, augment, hand-crafted features.

    Returns (track, "") or (None, reason); never raises, so one bad file never ends a run.
    """
    path, track_id, is_train = item
    if is_uri(path):  # an object store: decode a local copy, name the URI in any message
        try:
            local = fetch_to_temp(path)
        except Exception as exc:
            return None, f"{path}: cannot read ({type(exc).__name__}: {exc})"
        try:  # never streamed: the model's side could not read the copy again
            track, reason = prepare_track(
                (str(local), track_id, is_train), replace(plan, stream_seconds=None)
            )
            return track, reason.replace(str(local), path)
        finally:
            local.unlink(missing_ok=True)
    if is_long(path, plan.stream_seconds) and not (is_train and plan.augment and plan.copies):
        return _prepare_streamed(path, plan)
    decoded, reason = try_load_track(path)
    if decoded is None:
        return None, reason
    try:
        views = [decoded.samples]
        if is_train and plan.augment and plan.copies:
            views += [
                augment_track(
                    decoded.samples, plan.augment, track_id, k, plan.seed, plan.noise_dir
                )[0]
                for k in range(1, plan.copies + 1)
            ]
        hand = [] if plan.handcrafted else None
        mel = [] if plan.logmel else None
        inputs = [] if plan.windows else None
        segments = []
        frames = logmel_frames(plan.segment_seconds)
        for y in views:
            starts, length = segment_track(y, plan.segment_seconds, plan.hop_seconds)
            segments.append((starts, length))
            if inputs is not None:
                windows = plan.windows.log_mel_windows(y, starts, length)
                inputs.append(TrackWindows(len(starts), windows))
            if hand is not None:
                hand.append(
                    np.stack([handcrafted_features(y[s : s + length]) for s in starts])[:, None, :]
                )
            if mel is not None:
                mel.append(
                    np.stack([logmel_features(y[s : s + length], frames) for s in starts])[
                        :, None, :
                    ]
                )
        return PreparedTrack(
            [] if inputs is not None else views,
            decoded.duration,
            decoded.content_hash,
            segments,
            hand,
            mel,
            inputs,
        ), ""
    except Exception as exc:  # a feature or augmentation failure is this file's, not the run's
        return None, f"{path}: could not prepare the audio ({type(exc).__name__}: {exc})"


def _prepare_streamed(path: str, plan: PrepareOptions) -> tuple[PreparedTrack | None, str]:
    """prepare_track for a long file, a chunk of segments at a time: the same segments, hash and
    per-segment features as the whole waveform gives, and no audio sent back."""
    segment, hop = segment_samples(plan.segment_seconds, plan.hop_seconds)
    digest = AudioHash()
    blocks = hashed(decode_blocks(Path(path)), digest)
    stream = StreamedSegments(
        blocks, segment, hop, per_chunk(chunk_seconds(plan.stream_seconds), hop)
    )
    starts, length, hand, mel = [], segment, [], []
    frames = logmel_frames(plan.segment_seconds)
    try:
        for chunk in stream:
            starts += [chunk.offset + s for s in chunk.starts]
            length = chunk.length
            segments = [chunk.audio[s : s + length] for s in chunk.starts]
            if plan.handcrafted:
                hand += [handcrafted_features(y) for y in segments]
            if plan.logmel:
                mel += [logmel_features(y, frames) for y in segments]
        duration = track_duration(path, stream.n_samples)
    except AudioError as exc:
        return None, str(exc)
    except Exception as exc:  # as try_load_track and prepare_track: this file's, not the run's
        return None, f"{path}: could not prepare the audio ({type(exc).__name__}: {exc})"
    return PreparedTrack(
        [],
        duration,
        digest.hexdigest(),
        [(starts, length)],
        [np.stack(hand)[:, None, :]] if plan.handcrafted else None,
        [np.stack(mel)[:, None, :]] if plan.logmel else None,
        streamed=True,
    ), ""
