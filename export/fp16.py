"""Mixed-precision ONNX (``--fp16``): float16 weights and activations, float32 inputs/outputs and fp32 islands.

The conversion is ONNX Runtime's maintained converter, ``onnxruntime.transformers.float16.convert_float_to_float16``
(it ships inside the ``onnxruntime`` wheel; ``onnxconverter-common`` holds the same code but is not installable
here), with ``keep_io_types=True`` (the interfaces stay float32, see ``diffdef_runtime.interfaces``). It inserts
the Cast nodes at every fp16/fp32 boundary itself. What we add is only the choice of what stays float32 (the
converter has an op-type block list, but no notion of "this subgraph computes coordinates"):

* by op type (``FP32_OPS``): GridSample (ONNX Runtime's CUDA GridSample is float32-only; the sampling
  coordinates need fp32 anyway), the normalisations (the exporter writes ``GroupNorm`` as
  Reshape -> InstanceNormalization -> Reshape -> Mul -> Add; a decomposed norm's ReduceMean/Pow/Sqrt as well),
  Softmax, and the converter's own default list (Range, CumSum, Min, Max, ...);
* by node (``fp32_nodes``): (1) everything upstream of a GridSample's ``grid`` input back to the last heavy
  op (Conv, MatMul, ...): the voxel coordinates ``i + u`` (up to 224) have an fp16 spacing of 1/8 voxel, far too
  coarse, and for diffeomorphic decoders this keeps the whole scaling-and-squaring integration in fp32;
  (2) the sinusoidal timestep embedding (everything upstream of Sin/Cos): ``t * freq`` reaches 1000 rad, where
  fp16's spacing is 0.5 rad; (3) Div nodes that divide by a Sqrt/Pow (a decomposed norm's ``x / sqrt(var)``);
  (4) everything upstream of a ReduceMean/ReduceSum back to the last heavy op: the statistics of decomposed
  norms (``HierarchicalGroupNorm``: centring and squaring; ``d * d`` overflows fp16 for ``|d| > 256``);
  (5) the Gather-based warp (``dvf_decoder_gather.onnx``, for TensorRT): every GatherElements and the nodes that
  consume its output (the corner weight x value products), with everything upstream of both back to the last
  heavy op: the same coordinates as rule (1), and the corner weights ``p - floor(p)``, which fp16 would round
  to 1/8 voxel.

Three repairs of the converter's output, written here because the converter does not do them (each is a
function below with its reason): identical duplicate Cast nodes (not SSA) are dropped, nodes are sorted
topologically, and fp32 -> fp16 -> fp32 round trips between consecutive blocked nodes are removed (without this
the converter rounds to fp16 between every two fp32 nodes, so there would be no fp32 islands at all). Types are
inferred on a weightless skeleton so that models above 2 GB convert too.

``warp.onnx`` is never converted (float32 always). Accuracy: see ``diffdef_export.verify`` (bound 1e-2 relative).
"""

from __future__ import annotations

import collections
import copy
import logging

import onnx

from diffdef_export.errors import ExportError

log = logging.getLogger(__name__)

#: Op types kept in float32 (added to the converter's ``DEFAULT_OP_BLOCK_LIST``).
FP32_OPS = frozenset({
    "GridSample", "GatherElements",
    "InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization",
    "ReduceMean", "ReduceSumSquare", "Pow", "Sqrt", "Reciprocal",
    "Softmax", "LogSoftmax",
    "Sin", "Cos", "Exp", "Log",
})
#: Where the backward walk from a GridSample's grid stops: the heavy ops that produce the field itself.
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "InstanceNormalization",
                       "GroupNormalization", "LayerNormalization", "Resize", "GridSample"})


def _converter():
    try:
        from onnxruntime.transformers import float16
    except ImportError as err:  # pragma: no cover - onnxruntime is a hard dependency
        raise ExportError(f"--fp16 needs onnxruntime.transformers.float16 (ships with onnxruntime): {err}") from err
    return float16


def _name_nodes(model: onnx.ModelProto) -> None:
    """Node blocking is by name: give unnamed nodes unique names."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_fp16auto_{i}"
        seen.add(node.name)


def fp32_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes kept in float32 beyond ``FP32_OPS`` (see the module docstring, rules 1-4)."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    keep: set[str] = set()

    def walk(tensors, stop_at_heavy: bool) -> None:
        stack = list(tensors)
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producer:
                continue
            seen.add(name)
            node = producer[name]
            if stop_at_heavy and node.op_type in HEAVY_OPS:
                continue
            keep.add(node.name)
            stack.extend(node.input)

    gathered = {out for node in graph.node if node.op_type == "GatherElements" for out in node.output}
    for node in graph.node:
        if node.op_type == "GatherElements" or gathered.intersection(node.input):
            keep.add(node.name)
            walk(node.input, stop_at_heavy=True)
        elif node.op_type == "GridSample" and len(node.input) > 1:
            walk([node.input[1]], stop_at_heavy=True)
        elif node.op_type in ("ReduceMean", "ReduceSum", "ReduceSumSquare"):
            walk(node.input, stop_at_heavy=True)
        elif node.op_type in ("Sin", "Cos"):
            walk(node.input, stop_at_heavy=False)
        elif node.op_type == "Div" and len(node.input) > 1 and producer.get(node.input[1]) is not None \
                and producer[node.input[1]].op_type in ("Sqrt", "Pow"):
            keep.add(node.name)
    return keep


def _drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """The converter inserts one ``<x>_cast_to_fp32`` Cast per fp32 consumer of an fp16 tensor ``x``, all with the
    same output name (not SSA: ``onnx.checker`` rejects it). They are identical; keep the first of each."""
    seen: set[bytes] = set()
    unique = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            unique.append(node)
    if len(unique) != len(graph.node):
        outputs = collections.Counter(o for n in unique for o in n.output)
        clash = [o for o, k in outputs.items() if k > 1]
        if clash:
            raise ExportError(f"fp16 conversion produced tensors written by several different nodes: {clash[:5]}")
        copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in unique]
        del graph.node[:]
        graph.node.extend(copies)


def _toposort(graph: onnx.GraphProto) -> None:
    """Sort nodes topologically in place. The converter appends its input Casts at the end of the node list,
    which ONNX Runtime tolerates but ``onnx.checker`` (rightly: the spec asks for sorted nodes) rejects."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError(f"fp16 graph has a cycle or a dangling input near node {pending[0].name!r}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def _skeleton(model: onnx.ModelProto, max_elements: int = 4096) -> onnx.ModelProto:
    """The model without its large weights (they become typed graph inputs): shape inference on models of any
    size (``onnx.shape_inference.infer_shapes`` serialises the model, which fails above 2 GB). Small initializers
    stay, since shape computations (Reshape targets, ...) read their values."""
    graph = onnx.GraphProto(name=model.graph.name)
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        size = 1
        for d in init.dims:
            size *= d
        if size <= max_elements and init.data_location != onnx.TensorProto.EXTERNAL:
            graph.initializer.append(init)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    skeleton = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return skeleton


def inferred_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Shape/type inference of every intermediate tensor (any model size)."""
    inferred = onnx.shape_inference.infer_shapes(_skeleton(model))
    inits = {i.name for i in model.graph.initializer}
    return [v for v in inferred.graph.value_info if v.name not in inits]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """``{tensor name: onnx.TensorProto data type}`` of inputs, outputs, intermediates and initializers."""
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred_value_info(model), *model.graph.input, *model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def _join_fp32_islands(model: onnx.ModelProto) -> int:
    """Remove fp32 -> fp16 -> fp32 round trips between consecutive fp32 nodes; returns how many.

    The converter casts the output of *every* blocked node to fp16 and back to fp32 before the next blocked
    node, so a chain of fp32 nodes (the coordinate arithmetic of a warp) is still rounded to fp16 after each
    node: no fp32 island at all. For each ``Cast(to=float)`` whose input is ``Cast(to=float16)`` of a float32
    tensor ``x``, its consumers read ``x`` directly; Casts left without consumers are removed.
    """
    graph = model.graph
    types = tensor_types(model)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT or node.output[0] in outputs:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != onnx.TensorProto.FLOAT16:
            continue
        if types.get(first.input[0]) == onnx.TensorProto.FLOAT:
            rename[node.output[0]] = first.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # Drop Casts (and only Casts) whose outputs nobody reads any more.
    removed = 0
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        dead_ids = {id(n) for n in dead}
        keep = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node if id(n) not in dead_ids]
        removed += len(dead)
        del graph.node[:]
        graph.node.extend(keep)
    return len(rename)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float32 model -> mixed-precision model (fp16 weights/activations, fp32 I/O and islands)."""
    if any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        raise ExportError("fp16 conversion expects a graph of standard ONNX ops only")
    float16 = _converter()
    model = copy.deepcopy(model)  # never mutate the caller's model (no serialisation: works above 2 GB)
    _name_nodes(model)
    # Types of every tensor, inferred here on a weightless skeleton (the converter's own inference serialises
    # the model: > 2 GB fails). The exporter also records value_info for some initializers, which the converter
    # then mistakes for fp16 activations and casts: value infos are replaced by the inferred ones.
    value_info = inferred_value_info(model)
    del model.graph.value_info[:]
    model.graph.value_info.extend(value_info)
    nodes = fp32_nodes(model)
    ops = set(float16.DEFAULT_OP_BLOCK_LIST) | FP32_OPS
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(ops),
                                                 node_block_list=sorted(nodes), disable_shape_infer=True)
    _drop_duplicate_nodes(converted.graph)
    _toposort(converted.graph)
    removed = _join_fp32_islands(converted)
    log.info("fp16: %d nodes, %d kept in fp32 by rule, fp32 op types %s, %d fp32->fp16->fp32 cast pairs removed",
             len(model.graph.node), len(nodes), sorted(ops & {n.op_type for n in model.graph.node}), removed)
    return converted


def precision_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of float16 / float32 initializers (weights) and of Cast nodes: a quick look at a converted file."""
    counts = collections.Counter()
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16:
            counts["fp16_initializers"] += 1
        elif init.data_type == onnx.TensorProto.FLOAT:
            counts["fp32_initializers"] += 1
    counts["casts"] = sum(node.op_type == "Cast" for node in model.graph.node)
    return dict(counts)
