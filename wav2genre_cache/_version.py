"""The package version: one place, read by the package, its files and `wav2genre --version`."""

__version__ = "0.1.0"
