"""Opset down-conversion really lands on the requested opset, or fails naming `opset`."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from onnxbuild.errors import StageError
from onnxbuild.opset import _drop_defaulted_unknown_attributes, default_opset


def reduce_model(noop: int) -> onnx.ModelProto:
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)
    node.attribute.append(helper.make_attribute("noop_with_empty_axes", noop))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_defaulted_attribute_unknown_to_target_is_dropped() -> None:
    model = reduce_model(0)
    assert _drop_defaulted_unknown_attributes(model, 18, 17) == 1
    onnx.checker.check_model(model)
    assert default_opset(model) == 17


def test_non_default_unknown_attribute_is_an_error() -> None:
    with pytest.raises(StageError) as info:
        _drop_defaulted_unknown_attributes(reduce_model(1), 18, 17)
    assert info.value.key == "opset" and "noop_with_empty_axes" in info.value.message
