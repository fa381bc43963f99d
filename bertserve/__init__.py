"""bertserve: fine-tune BERT-family encoders, export parity-checked ONNX, serve it batched."""

from __future__ import annotations

__version__ = "0.1.0"
