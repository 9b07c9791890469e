"""Lowering of optimized ONNX models through Apache TVM (``lightir.lowering``).

TVM is an optional extra (``pip install lightir[tvm]``) imported lazily: importing this
package does not import TVM, and the rest of lightir works without it.

    from lightir.lowering import compile_model, load
    compile_model(model, "model.so", target="x86")   # also writes model.json
    outputs = load("model.so").run(None, {"input": x})   # as an onnxruntime session: a list
"""

from __future__ import annotations

from typing import Any

__all__ = ["compile_model", "load", "resolve", "unsupported_ops"]


def __getattr__(name: str) -> Any:
    if name in ("compile_model", "load", "unsupported_ops", "CompiledModel", "LoweringError"):
        from lightir.lowering import tvm_backend

        return getattr(tvm_backend, name)
    if name == "resolve":
        from lightir.lowering.targets import resolve

        return resolve
    raise AttributeError(name)
