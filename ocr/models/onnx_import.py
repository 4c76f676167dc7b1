"""ONNX graphs as trainable torch modules (onnx2torch), whole or cut at named tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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
    return graph_model


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
