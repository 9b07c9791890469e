"""Run a user's onnx-graphsurgeon function as a lightir pass (the ``gs`` extra).

    import onnx_graphsurgeon as gs
    from lightir.graphsurgeon import register_gs_pass

    def drop_identity(graph: gs.Graph) -> None:
        ...  # edit the graph in place

    register_gs_pass("drop-identity", drop_identity, contract="exact")

The model crosses the edge as a protobuf (graphsurgeon works on ``onnx.ModelProto``) and comes
back as a new onnx-ir model, which the pass manager then verifies like any other pass result.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import onnx_ir as ir

from lightir.errors import UsageError
from lightir.pass_base import EXACT, Contract, Pass, PassContext, PassResult
from lightir.registry import register_pass

logger = logging.getLogger(__name__)


def _import_gs():
    try:
        import onnx_graphsurgeon as gs
    except ImportError as exc:
        raise UsageError("onnx-graphsurgeon is not installed; pip install 'lightir[gs]'") from exc
    return gs


def register_gs_pass(
    name: str,
    function: Callable[[Any], Any],
    *,
    contract: Contract | str = EXACT,
    summary: str | None = None,
) -> type[Pass]:
    """Register ``function(graph: gs.Graph)`` (edits in place, or returns a new gs.Graph)."""

    class GraphSurgeonPass(Pass):
        def run(self, model: ir.Model, context: PassContext) -> PassResult:
            gs = _import_gs()
            graph = gs.import_onnx(ir.to_proto(model))
            returned = function(graph)
            if returned is not None:
                graph = returned
            graph.cleanup().toposort()
            exported = gs.export_onnx(graph)
            new_model = ir.from_proto(exported)
            new_model.meta.update(model.meta)
            return PassResult(new_model, modified=True)

    GraphSurgeonPass.__doc__ = summary or function.__doc__ or f"graphsurgeon function {name}"
    GraphSurgeonPass.__name__ = f"GraphSurgeonPass_{function.__name__}"
    register_pass(name, contract=contract, summary=summary)(GraphSurgeonPass)
    return GraphSurgeonPass
