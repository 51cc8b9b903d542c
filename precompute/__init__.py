"""Training, loading and tracing of LoRA and frozen-encoder Whisper emotion models."""

if __name__ != "loralens.precompute":  # one name per module: the checkout's folders install as loralens.*
    raise ImportError(f"import loralens.precompute, not {__name__}: the package installs under one name "
                      "(pip install -e . in the checkout)")
