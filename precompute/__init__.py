"""Training, loading and tracing of LoRA and frozen-encoder Whisper emotion models."""
