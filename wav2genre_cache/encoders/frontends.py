"""How an encoder's input is made from a track's segments: raw waveform, or its own log-mel.

A front end turns one track's segments into model inputs ("windows") and says, for each segment
a window holds, which output frames are its own; the backbone runs the model on batches of
windows and mean-pools those frames of every hidden state. Three front ends:

- `WaveformFrontEnd` (Wav2Vec2, HuBERT, WavLM): each segment alone, normalised, no padding.
- `FeatureFrontEnd` (AST, any encoder with an audio feature extractor): each segment alone,
  through the model's extractor (which pads or cuts to its own length); pooled over all tokens.
- `WhisperFrontEnd`: 30 s log-mel windows (3000 mel frames, 1500 encoder frames, 50 a second);
  a segment is pooled over the frames that hold its audio. `alone`: one zero-padded window per
  segment; `packed`: up to floor(30 / segment) consecutive segments share a window.

This module loads no model: backbone.py loads one, asks `frontend_for` which front end it gets,
and turns the ValueErrors raised here (messages for the user) into BackboneError.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from wav2genre_cache.audio.decode import SAMPLE_RATE, normalize_segments
from wav2genre_cache.audio.whisper_windows import Span, WhisperWindows, Window

WINDOW_MODES = ("alone", "packed")
# How Whisper segments share windows unless --window says otherwise: one place to change it once
# real weights have measured alone against packed (and the --window help text in cli.py).
DEFAULT_WINDOW = "packed"


class WaveformFrontEnd:
    """Raw 16 kHz waveform, normalised per segment; each segment its own input, never padded."""

    kind = "waveform"
    window = "alone"
    sample_rate = SAMPLE_RATE
    pads = False  # an input shorter than a full segment is run alone, not padded
    input_name: str | None = None  # passed positionally, as transformers' own examples do

    def input_samples(self, segment_samples: int) -> int:
        """Samples in one batched input for segments of this length."""
        return segment_samples

    def windows(self, samples: np.ndarray, starts: list[int], length: int) -> Iterable[Window]:
        """Each segment alone (a view, not a copy), pooled over all its frames."""
        return [(samples[s : s + length], [(i, 0, None)]) for i, s in enumerate(starts)]

    def segment_problem(self, segment_seconds: float) -> str | None:
        """Why segments of this length cannot be embedded, or None."""
        return None

    def inputs(self, batch: np.ndarray, device: torch.device) -> torch.Tensor:
        """The model's input tensor for a [batch, samples] float32 array, on `device`."""
        if device.type == "cuda":
            # Raw audio up, normalised there: the main thread's numpy pass was a third of its
            # per-batch work, and a GPU feeds on that thread.
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            return normalize_on_device(x.pin_memory().to(device, non_blocking=True))
        return torch.from_numpy(normalize_segments(batch))


def normalize_on_device(x: torch.Tensor) -> torch.Tensor:
    """normalize_segments in torch, on the tensor's device (float32 [batch, samples])."""
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + 1e-7)


class FeatureFrontEnd(WaveformFrontEnd):
    """The model's own feature extractor (log-mel) on each segment alone; all tokens pooled."""

    kind = "logmel"

    def __init__(self, extractor: Any):
        self.extractor = extractor
        self.input_name = extractor.model_input_names[0]
        self.sample_rate = _supported_rate(extractor)

    def inputs(self, batch: np.ndarray, device: torch.device) -> torch.Tensor:
        """The extractor's features of each row, as one tensor on `device`."""
        feats = self.extractor(list(batch), sampling_rate=self.sample_rate, return_tensors="np")
        return torch.from_numpy(np.ascontiguousarray(feats[self.input_name])).to(device)


class WhisperFrontEnd(FeatureFrontEnd):
    """Whisper's fixed log-mel windows; segments are pooled over their own encoder frames."""

    pads = True  # every window is zero-padded to its full length, as Whisper was trained

    def __init__(self, extractor: Any, encoder: torch.nn.Module, window: str):
        super().__init__(extractor)
        if window not in WINDOW_MODES:
            raise ValueError(f"unknown --window {window!r}; use {' or '.join(WINDOW_MODES)}")
        # The encoder refuses any other input length: its window is fixed by its positions.
        frames = int(encoder.config.max_source_positions)
        mel_frames = frames * encoder.conv1.stride[0] * encoder.conv2.stride[0]
        window_samples = mel_frames * int(extractor.hop_length)
        if window_samples != int(extractor.n_samples):
            raise ValueError(
                f"its feature extractor makes {extractor.n_samples / self.sample_rate:g} s chunks, "
                f"but the encoder reads {window_samples / self.sample_rate:g} s windows"
            )
        if int(extractor.feature_size) != int(encoder.config.num_mel_bins):
            raise ValueError(
                f"its feature extractor makes {extractor.feature_size} mel bins, but the encoder "
                f"reads {encoder.config.num_mel_bins}"
            )
        # What the decode workers can use too (numpy only): the windows and their log-mel.
        self.layout = WhisperWindows(
            window,
            window_samples,
            frames,
            int(extractor.n_fft),
            int(extractor.hop_length),
            np.asarray(extractor.mel_filters, np.float32),
        )

    @property
    def window(self) -> str:  # type: ignore[override]
        """alone | packed: how segments share windows (the layout's)."""
        return self.layout.window

    @property
    def window_samples(self) -> int:
        """Samples in one window (480,000: 30 s at 16 kHz)."""
        return self.layout.window_samples

    def input_samples(self, segment_samples: int) -> int:
        """Every input is one whole window."""
        return self.window_samples

    def segment_problem(self, segment_seconds: float) -> str | None:
        """Segments longer than a window cannot be read whole."""
        if round(segment_seconds * self.sample_rate) > self.window_samples:
            return (
                f"--segment-seconds {segment_seconds:g}: Whisper reads "
                f"{self.window_samples / self.sample_rate:g} s windows; use at most that"
            )
        return None

    def windows(self, samples: np.ndarray, starts: list[int], length: int) -> Iterable[Window]:
        """Consecutive segments sharing windows as --window says (audio/whisper_windows.py)."""
        return self.layout.windows(samples, starts, length)

    def inputs(self, batch: np.ndarray, device: torch.device) -> torch.Tensor:
        """Log-mel windows [batch, mels, frames] of audio windows [batch, samples].

        A batch of log-mel already made (by the decode workers) goes to the device as it is.
        On the CPU the log-mel is whisper_windows' numpy code, the workers' own. On a GPU it is
        computed there: through the extractor a GPU's batch went up as audio, came down as mels
        and went up again: 0.125 s per 64 windows on an H100 machine, against 0.008 s computed
        on the GPU; a whisper-base-sized encoder went from 9,400 to 24,500 audio-s/s (packed,
        bfloat16).
        """
        if batch.ndim == 3:
            mel = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            return mel.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else mel
        if device.type != "cuda":
            return torch.from_numpy(np.stack([self.layout.log_mel(row) for row in batch]))
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return whisper_log_mel(x.pin_memory().to(device, non_blocking=True), self.extractor)


def whisper_log_mel(audio: torch.Tensor, extractor: Any) -> torch.Tensor:
    """WhisperFeatureExtractor's log-mel of whole windows [batch, samples], on audio's device.

    The same steps as transformers' `_torch_extract_fbank_features` (its torch path), with the
    extractor's own mel filters: power STFT without its last frame, log10, floored 8 below each
    window's maximum, scaled by (x + 4) / 4.
    """
    window = torch.hann_window(extractor.n_fft, device=audio.device)
    stft = torch.stft(
        audio, extractor.n_fft, extractor.hop_length, window=window, return_complex=True
    )
    power = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(np.asarray(extractor.mel_filters, np.float32)).to(audio.device)
    log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def pool_spans(hidden: tuple[torch.Tensor, ...], spans: list[list[Span]]) -> list[np.ndarray]:
    """Mean over each span's frames of every hidden state: [len(spans[b]), layers, dim] per row."""
    if all(len(s) == 1 and s[0][1] == 0 and s[0][2] is None for s in spans):
        # One segment per row over all its frames: a plain mean (the waveform path's sums).
        pooled = torch.stack([h.mean(dim=1, dtype=torch.float32) for h in hidden], dim=1)
        return list(pooled.cpu().numpy()[:, None])
    weights = span_weights(spans, hidden[0].shape[1]).to(hidden[0].device)
    # One batched matrix product per layer: [batch, segments, frames] @ [batch, frames, dim].
    pooled = torch.stack([torch.bmm(weights, h.float()) for h in hidden], dim=2).cpu().numpy()
    return [pooled[b, : len(row)] for b, row in enumerate(spans)]


def span_weights(spans: list[list[Span]], n_frames: int) -> torch.Tensor:
    """[rows, most spans in a row, frames]: 1/len over each span's frames, 0 elsewhere."""
    weights = torch.zeros(len(spans), max(map(len, spans)), n_frames)
    for b, row in enumerate(spans):
        for j, (_, first, end) in enumerate(row):
            end = n_frames if end is None else end
            weights[b, j, first:end] = 1.0 / (end - first)
    return weights


# ---- which front end a model gets ----------------------------------------------------------------


def default_extractor(config: Any) -> Any | None:
    """The feature extractor transformers pairs with this model type, sized from its config.

    A save_pretrained folder of a model alone has no preprocessor_config.json: the extractor's
    defaults are then taken, with any argument the model's config also names (AST's
    num_mel_bins and max_length) taken from the config; None if the type has no extractor.
    """
    import transformers
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES

    name = FEATURE_EXTRACTOR_MAPPING_NAMES.get(getattr(config, "model_type", ""))
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        return None
    params = inspect.signature(cls.__init__).parameters
    kwargs = {p: getattr(config, p) for p in params if p != "self" and hasattr(config, p)}
    if getattr(config, "model_type", "") == "whisper":
        # Whisper's extractor calls its mel bins feature_size: 80, or 128 for large-v3.
        kwargs = {"feature_size": config.num_mel_bins}
    return cls(**kwargs)


def frontend_for(model: torch.nn.Module, extractor: Any | None, window: str | None) -> Any:
    """The front end of a loaded encoder; ValueError (a message for the user) if it has none."""
    if window not in (None, *WINDOW_MODES):
        raise ValueError(f"unknown --window {window!r}; use {' or '.join(WINDOW_MODES)}")
    if getattr(model.config, "model_type", "") == "whisper":
        extractor = extractor or default_extractor(model.config)
        frontend = WhisperFrontEnd(extractor, model, window or DEFAULT_WINDOW)
    elif extractor is None:
        raise ValueError(
            "not an audio encoder: transformers has no audio feature extractor for its type "
            f"{getattr(model.config, 'model_type', '?')!r} (a text or image model?)"
        )
    else:
        try:
            probe = extractor(np.zeros(1600, np.float32), sampling_rate=extractor.sampling_rate)
            values = np.asarray(probe[extractor.model_input_names[0]])
        except Exception as exc:  # an image or text processor refuses audio in its own way
            raise ValueError(
                f"its feature extractor {type(extractor).__name__} does not take audio ({exc})"
            ) from None
        # A raw-waveform extractor gives the samples back, one value each (Wav2Vec2's).
        waveform = values.ndim == 2 and values.shape[1] == 1600
        frontend = WaveformFrontEnd() if waveform else FeatureFrontEnd(extractor)
        if waveform:
            frontend.sample_rate = _supported_rate(extractor)
        if window == "packed":
            raise ValueError(
                "--window packed applies to Whisper encoders only; this model reads each "
                "segment alone (leave --window out, or pass --window alone)"
            )
    if getattr(extractor, "dither", 0.0):
        extractor.dither = 0.0  # random noise would make predict differ from embed
    return frontend


def _supported_rate(extractor: Any) -> int:
    """The extractor's sample rate, which must be the one every track is decoded to."""
    rate = int(extractor.sampling_rate)
    if rate != SAMPLE_RATE:
        raise ValueError(
            f"it reads {rate} Hz audio; wav2genre decodes every track to {SAMPLE_RATE} Hz and "
            "resamples to no other rate"
        )
    return rate
