"""Lowering of optimized ONNX models through Apache TVM (``lightir.lowering``).

TVM is an optional extra (``pip install lightir[tvm]``) imported lazily; the rest of lightir
works without it. Nothing is implemented here yet: the TVM backend is tracked as its own issue.
"""
