"""The `wav2genre` command line."""

from wav2genre_cache.cli.app import main

__all__ = ["main"]
