"""onnxbuild: declarative, validated, reproducible ONNX builds from PyTorch models."""

__version__ = "0.1.0"
