"""Fine-tuning the encoder's top layers with a head, from audio; resumable."""
