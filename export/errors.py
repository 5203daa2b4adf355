"""Errors of the export layer (the CLI turns them into a clear message and a non-zero exit)."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export cannot be done as asked (bad checkpoint, unsupported option, exporter failure)."""


class VerificationError(ExportError):
    """An exported component disagrees with PyTorch beyond its tolerance, or fails ``onnx.checker``."""


class TensorRTUnavailableError(ExportError):
    """``--tensorrt`` was asked where TensorRT (the ``tensorrt`` package) or a CUDA GPU is missing."""
