"""Inference machinery: onnxruntime sessions (CUDA EP → CPU EP fallback), dynamic batchers, stage admission."""
