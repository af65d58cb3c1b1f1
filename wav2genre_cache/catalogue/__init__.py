"""Labelling a catalogue: `predict --engine ray` over any number of files, folders and manifests."""
