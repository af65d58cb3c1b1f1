"""Audio encoders: where weights come from, front ends, CPU tuning, the loaded backbone, embedding tracks."""
