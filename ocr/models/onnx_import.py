"""ONNX graphs as trainable torch modules (onnx2torch), whole or cut at named tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

# PP-OCRv4's PPLCNetV3 backbone in the pinned detector (ocr.pretrained.PPOCR_DETECTOR): its four
# stages' outputs (strides 4, 8, 16, 32; 48, 96, 192 and 384 channels), before the 1x1 convolutions
# that narrow them for PP-OCR's own neck. Tensor names as Paddle's exporter wrote them.
PPOCR_BACKBONE_FEATURES = ("p2o.Add.43", "p2o.Add.71", "p2o.Add.147", "p2o.Add.215")


def load_onnx_with_trainable_weights(onnx_path: Path):
    """The ONNX model with its weights as initializers, which onnx2torch makes trainable: Paddle's
    exporter stores them as Constant nodes, which onnx2torch would turn into frozen buffers."""
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    try:
        graph_model = onnx.load(str(onnx_path))
    except Exception as error:  # onnx raises DecodeError and others for a damaged file
        raise ValueError(f"{onnx_path}: not a readable ONNX model: {error}") from error
    graph = graph_model.graph
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(tensor, name=node.output[0]))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _spell_out_same_padding(graph_model, onnx_path)
    return graph_model


def _spell_out_same_padding(graph_model, onnx_path: Path) -> None:
    """Replace ``auto_pad: SAME_UPPER/SAME_LOWER`` (which onnx2torch does not convert; PP-OCRv6's
    stem uses it on 2x2 kernels) by the explicit pads it means. With stride 1 they do not depend on
    the input's size: (kernel - 1) * dilation in all, the odd one at the end (UPPER) or the start."""
    from onnx import helper

    weights = {initializer.name: initializer for initializer in graph_model.graph.initializer}
    for node in graph_model.graph.node:
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        auto_pad = attributes.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        if "kernel_shape" in attributes:
            kernel = list(attributes["kernel_shape"])
        else:  # optional on Conv: the weight's spatial dimensions
            if len(node.input) < 2 or node.input[1] not in weights:
                raise ValueError(
                    f"{onnx_path}: {node.op_type} {node.name!r} pads {auto_pad} without a kernel_shape or a constant weight"
                )
            kernel = list(weights[node.input[1]].dims[2:])
        strides = list(attributes.get("strides", [1] * len(kernel)))
        dilations = list(attributes.get("dilations", [1] * len(kernel)))
        if any(stride != 1 for stride in strides):
            raise ValueError(f"{onnx_path}: {node.op_type} {node.name!r} pads {auto_pad} with strides {strides}: "
                             "only stride 1 can be converted (its padding would depend on the input's size)")  # fmt: skip
        totals = [(size - 1) * dilation for size, dilation in zip(kernel, dilations)]
        begins = [total // 2 if auto_pad == "SAME_UPPER" else total - total // 2 for total in totals]
        pads = begins + [total - begin for total, begin in zip(totals, begins)]
        kept = [attribute for attribute in node.attribute if attribute.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("pads", pads)])


def load_logits_network(onnx_path: Path) -> nn.Module:
    """A DB detector's graph (one output, made by a final Sigmoid) as a torch module that returns the
    Sigmoid's input: the loss and the post-processor take logits."""
    from onnx2torch import convert

    graph_model = load_onnx_with_trainable_weights(onnx_path)
    graph, nodes = graph_model.graph, list(graph_model.graph.node)
    if len(graph.output) != 1 or not nodes or nodes[-1].op_type != "Sigmoid" or nodes[-1].output[0] != graph.output[0].name:
        raise ValueError(f"{onnx_path}: expected one output made by a final Sigmoid (a DB probability map)")
    graph.output[0].name = nodes[-1].input[0]
    graph.node.pop()
    return convert(graph_model)


def load_feature_network(onnx_path: Path, feature_names: Sequence[str]) -> nn.Module:
    """The part of the graph that computes the tensors ``feature_names``, as a torch module returning
    them in that order; everything after them (for PP-OCR: its neck and head) is cut off."""
    from onnx import helper
    from onnx.utils import Extractor
    from onnx2torch import convert

    graph_model = load_onnx_with_trainable_weights(onnx_path)
    produced = {name for node in graph_model.graph.node for name in node.output}
    missing = [name for name in feature_names if name not in produced]
    if missing:
        raise ValueError(
            f"{onnx_path}: has no tensors {missing}; PPOCR_BACKBONE_FEATURES (the default) are those of "
            "the pinned PP-OCRv4 detector (ocr.pretrained.PPOCR_DETECTOR)"
        )
    input_names = [value.name for value in graph_model.graph.input]
    # the feature tensors have no declared shapes: the extractor needs value infos for the outputs
    graph_model.graph.value_info.extend(helper.make_empty_tensor_value_info(name) for name in feature_names)
    return convert(Extractor(graph_model).extract_model(input_names, list(feature_names)))


# -- inference-only rewrites of an imported graph ----------------------------------------------------
# Paddle's exporter spells hardswish as x * relu6(x + 3) / 6 and follows convolutions and activations
# with scalar affines (PPLCNetV3's learnable affine blocks: a * x + b). Each is a pass over the whole
# tensor; folded into the convolutions they follow or feed, and with hardswish as one operation, ONNX
# Runtime runs the backbone ~25% faster. Exact up to float rounding; export checks the result.

_BINARY_KINDS = {"add": "Add", "mul": "Mul", "div": "Div", "_onnx_div": "Div", "true_divide": "Div"}


def _kind(network: nn.Module, node) -> str | None:
    """'Add', 'Mul', 'Div', 'Conv1x1' (no padding), 'Conv', 'ReLU6' or None for a graph node."""
    if node.op != "call_module":
        return None
    module = network.get_submodule(node.target)
    if isinstance(module, nn.Conv2d):
        one_by_one = module.kernel_size == (1, 1) and module.padding in ((0, 0), 0) and module.padding_mode == "zeros"
        return "Conv1x1" if one_by_one else "Conv"
    if isinstance(module, nn.ReLU6):
        return "ReLU6"
    function = getattr(module, "math_op_function", None)  # onnx2torch's binary operations
    if function is not None and getattr(module, "broadcast", None) is None:
        return _BINARY_KINDS.get(getattr(function, "__name__", ""))
    return None


def _scalar(network: nn.Module, node) -> float | None:
    """The value of a one-element constant (an imported initializer), else None."""
    if getattr(node, "op", None) != "get_attr":
        return None
    value = network
    for part in node.target.split("."):
        value = getattr(value, part)
    return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else None


def _affine(network: nn.Module, add) -> tuple[Any, float, float] | None:
    """``(x, a, b)`` when ``add`` is ``a * x + b`` with scalar constants and ``a * x`` used only there."""
    if _kind(network, add) != "Add":
        return None
    for mul, bias in (add.args, add.args[::-1]):
        b = _scalar(network, bias)
        if b is None or _kind(network, mul) != "Mul" or len(mul.users) != 1:
            continue
        for scale, x in (mul.args, mul.args[::-1]):
            a = _scalar(network, scale)
            if a is not None and _scalar(network, x) is None:
                return x, a, b
    return None


def simplify_for_inference(network: nn.Module) -> dict[str, int]:
    """Rewrite an imported graph (``torch.fx.GraphModule`` from onnx2torch) **in place** into fewer,
    equivalent operations for inference: hardswish as one operation; ``a * conv(x) + b`` folded into
    the convolution; ``a * x + b`` feeding only 1x1 convolutions folded into them (not into padded
    ones: the padding would see ``b``). Mutates convolution weights: call it on a copy. Returns how
    many of each it rewrote. Anything else (another network) is left as it is."""
    import torch.nn.functional as F
    from torch import fx

    counts = {"hardswish": 0, "affine_after_conv": 0, "affine_before_1x1_conv": 0}
    if not isinstance(network, fx.GraphModule):
        return counts
    graph = network.graph
    for relu6 in list(graph.nodes):  # x * relu6(x + 3) / 6
        if _kind(network, relu6) != "ReLU6" or len(relu6.users) != 1:
            continue
        shifted, mul = relu6.args[0], next(iter(relu6.users))
        if _kind(network, shifted) != "Add" or len(shifted.users) != 1 or _kind(network, mul) != "Mul":
            continue
        x = next((arg for arg in shifted.args if _scalar(network, arg) is None), None)
        if sorted(_scalar(network, arg) or 0.0 for arg in shifted.args) != [0.0, 3.0] or set(mul.args) != {x, relu6}:
            continue
        div = next(iter(mul.users)) if len(mul.users) == 1 else None
        if div is None or _kind(network, div) != "Div" or div.args[0] is not mul or _scalar(network, div.args[1]) != 6.0:
            continue
        with graph.inserting_after(div):
            fused = graph.call_function(F.hardswish, (x,))
        div.replace_all_uses_with(fused)
        for node in (div, mul, relu6, shifted):
            graph.erase_node(node)
        counts["hardswish"] += 1
    for add in list(graph.nodes):
        affine = _affine(network, add)
        if affine is None:
            continue
        x, a, b = affine
        mul = next(arg for arg in add.args if _kind(network, arg) == "Mul")
        users = list(add.users)
        if _kind(network, x) in ("Conv", "Conv1x1") and len(x.users) == 1:  # a * conv(x) + b
            convs, name = [network.get_submodule(x.target)], "affine_after_conv"
        elif users and all(_kind(network, user) == "Conv1x1" for user in users):  # W (a x + b) = aW x + b sum(W)
            convs, name = [network.get_submodule(user.target) for user in users], "affine_before_1x1_conv"
        else:
            continue
        with torch.no_grad():
            for conv in convs:
                if conv.bias is None:
                    conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype))
                if name == "affine_after_conv":
                    conv.weight.mul_(a)
                    conv.bias.mul_(a).add_(b)
                else:
                    conv.bias.add_(b * conv.weight.sum(dim=(1, 2, 3)))
                    conv.weight.mul_(a)
        add.replace_all_uses_with(x)
        graph.erase_node(add)
        graph.erase_node(mul)
        counts[name] += 1
    graph.eliminate_dead_code()
    network.recompile()
    return counts
