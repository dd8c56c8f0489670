"""Distributed image classification with MXNet (or ONNX Runtime) on Spark. Entry point: ``python -m job --help``."""

__version__ = "0.1.0"
