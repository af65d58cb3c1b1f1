"""Decoding, segmenting, augmenting audio; Whisper's windows and log-mel; the decode worker processes."""
