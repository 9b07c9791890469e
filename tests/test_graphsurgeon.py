from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

import lightir
from lightir import zoo
from lightir.graphsurgeon import register_gs_pass
from lightir.testing import assert_outputs_close, op_types


def test_graphsurgeon_function_runs_as_a_verified_pass(throwaway_passes):
    def relu_to_clip(graph: gs.Graph) -> None:
        """Rewrite Relu as Clip(min=0): the same function."""
        for node in graph.nodes:
            if node.op == "Relu":
                zero = gs.Constant(f"{node.name}_zero", np.array(0.0, np.float32))
                node.op = "Clip"
                node.inputs.append(zero)

    register_gs_pass("relu-to-clip", relu_to_clip)
    model = zoo.build("vgg")
    result = lightir.optimize(model, "relu-to-clip")
    assert result.report.ok
    assert "Relu" not in op_types(result.model) and "Clip" in op_types(result.model)
    assert_outputs_close(model, result.model, rtol=1e-6)


def test_wrong_graphsurgeon_function_is_rolled_back(throwaway_passes):
    def relu_to_sigmoid(graph: gs.Graph) -> None:
        """Wrong on purpose."""
        for node in graph.nodes:
            if node.op == "Relu":
                node.op = "Sigmoid"

    register_gs_pass("relu-to-sigmoid", relu_to_sigmoid)
    result = lightir.optimize("zoo:vgg", "relu-to-sigmoid")
    assert not result.report.ok
    assert "Relu" in op_types(result.model)
