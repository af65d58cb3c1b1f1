"""wav2genre: music classification from cached per-layer Wav2Vec2 embeddings."""

__version__ = "0.1.0"
