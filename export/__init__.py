"""DiffDef export (import name ``diffdef_export``): checkpoint -> verified ONNX bundle (+ TensorRT engines).

Public API (imported lazily by the modules, so ``import diffdef_export`` stays light):

* ``diffdef_export.bundle_writer.export_bundle(checkpoint_dir, out_dir, fp16=False, tensorrt=False, grid=None,
  tensorrt_batch=1) -> Path``: the whole export; ``diffdef-export`` (``diffdef_export.cli:main``) wraps it.
* ``diffdef_export.onnx_export``: ``load_checkpoint``, ``resolve_output_grid``, ``components``, ``export_module``.
* ``diffdef_export.fp16.convert_to_fp16``, ``diffdef_export.verify`` (parity, checker, op inventory),
  ``diffdef_export.warp_gather`` (warp without GridSample), ``diffdef_export.unet_conv2d`` (the UNet twin for
  ONNX Runtime's CPU provider), ``diffdef_export.tensorrt_build.build_engines``.
* ``diffdef_export.testing.make_untrained_checkpoint``: random checkpoints for tests and benchmarks.
* Errors: ``diffdef_export.errors.ExportError`` (and ``VerificationError``, ``TensorRTUnavailableError``).
"""
