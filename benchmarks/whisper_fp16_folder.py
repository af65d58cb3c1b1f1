"""Write a pip:whisper-* encoder as a save_pretrained folder in float16, small enough to carry.

The device machine cannot install the weight packages and a call carries at most 64 MiB: the
whisper-base encoder stored in float16 (as its pip package already stores it: the embeddings
are the same) is 40 MB. Load it with `--model FOLDER`.

    python benchmarks/whisper_fp16_folder.py --model pip:whisper-base --out .whisper-base-fp16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import WhisperConfig, WhisperFeatureExtractor

from wav2genre_cache.encoders.ct2.whisper import load_ct2_whisper_encoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pip:whisper-base")
    p.add_argument("--out", type=Path, default=Path(".whisper-base-fp16"))
    args = p.parse_args()
    encoder, revision = load_ct2_whisper_encoder(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    # One decoder layer in the config: only the encoder is saved, and only it embeds audio.
    config = WhisperConfig.from_dict({**encoder.config.to_dict(), "decoder_layers": 1})
    config.save_pretrained(args.out)
    state = {
        f"encoder.{k}": v.detach().to(torch.float16).contiguous()
        for k, v in encoder.state_dict().items()
    }
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(args.out)
    (args.out / "SOURCE.txt").write_text(f"{args.model} encoder ({revision}) in float16\n")
    print(f"wrote {args.out}: {sum(v.numel() for v in state.values()):,} encoder parameters")


if __name__ == "__main__":
    main()
