"""CTranslate2 (faster-whisper) files: the binary format and the conversion to a transformers encoder."""
