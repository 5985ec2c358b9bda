"""supercharge-timm: timm image models made fast on ONNX Runtime and TensorRT, proven right."""

__version__ = "0.1.0"
