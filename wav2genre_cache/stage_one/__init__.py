"""Stage one: audio to a resumable cache of per-layer embeddings (local and Ray engines)."""
