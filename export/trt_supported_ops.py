"""ONNX operators that TensorRT's ONNX parser (onnx-tensorrt) imports, kept as data.

Source: onnx-tensorrt ``docs/operators.md``, "TensorRT 10.15 supports operators in the inclusive range of opset 9
to opset 24" (the operator support matrix, rows marked ``Y``). Restrictions that matter for DiffDef:

* ``GridSample``: "Input must be 4D input" up to TensorRT 10.x; native 5-D (trilinear) GridSample arrives with
  TensorRT 11.2 (DESIGN.md, "Export and runtime facts"), so up to 11.1 (and in ONNX Runtime's TensorRT EP,
  which links TensorRT 10) a volume warp needs ``warp_gather.onnx`` (Gather arithmetic, no GridSample). The
  importer also reads opset 20's ``mode="linear"`` as nearest (NVIDIA/TensorRT#4646), so DiffDef's TensorRT
  builds use the Gather twins (``warp_gather.onnx``, ``dvf_decoder_gather.onnx``) for every version.
* ``Resize``: modes ``nearest``/``linear`` with ``half_pixel``/``pytorch_half_pixel``/``asymmetric``/
  ``align_corners`` coordinate transforms (the decoder's upsampling and the DVF upsampling use these).
* ``InstanceNormalization``, ``GroupNormalization``, ``LayerNormalization`` (first output only), ``Einsum``,
  ``Gelu``: supported.

Not supported (``N`` in the matrix) and absent here: AffineGrid, Bernoulli, BitShift, Bitwise*, Col2Im,
CenterCropPad, Compress, ConcatFromSequence, ConvInteger, DFT, Det, DynamicQuantizeLinear, ImageDecoder,
MatMulInteger, MaxRoiPool, MaxUnpool, MelWeightMatrix, Multinomial, NegativeLogLikelihoodLoss, Optional*,
QLinearConv, QLinearMatMul, RegexFullMatch, Sequence*, SoftmaxCrossEntropyLoss, SplitToSequence, String*,
TfIdfVectorizer, Unique.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

SOURCE = "onnx-tensorrt docs/operators.md (TensorRT 10.15, opsets 9-24)"

#: Rows marked ``Y`` in the onnx-tensorrt operator support matrix (default ONNX domain).
SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu
Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum
Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

#: TensorRT version from which a 5-D (volumetric) GridSample is parsed natively.
GRIDSAMPLE_5D_MIN_VERSION = (11, 2)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """``{op_type: count}`` of the main graph (domain-qualified when not the default domain), sorted."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def has_5d_gridsample(model: onnx.ModelProto) -> bool:
    """A GridSample whose grid input has rank 5 (N, D, H, W, 3), i.e. a volume sampler."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
             if v.type.tensor_type.HasField("shape")}
    return any(n.op_type == "GridSample" and ranks.get(n.input[1], 5) == 5 for n in model.graph.node)


def unsupported_ops(counts: Mapping[str, int], *, gridsample_5d: bool = False,
                    tensorrt_version: tuple[int, int] | None = None) -> list[str]:
    """Ops of ``counts`` that TensorRT's ONNX parser cannot import.

    ``tensorrt_version=None`` means "any TensorRT 10/11": a 5-D GridSample is then reported (it needs 11.2+).
    """
    bad = sorted(op for op in counts if op not in SUPPORTED_OPS)
    needs_new = tensorrt_version is None or tuple(tensorrt_version) < GRIDSAMPLE_5D_MIN_VERSION
    if gridsample_5d and needs_new and "GridSample" not in bad:
        bad.append("GridSample")
    return sorted(bad)
