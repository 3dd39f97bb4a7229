"""BentoML services: serve only (ONNX Runtime + tokenizers; no torch, no transformers)."""
