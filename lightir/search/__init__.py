"""The accuracy-budgeted compression search behind ``compress`` (issue 15).

* :mod:`.latency`: per-layer latency tables and whole-model timings measured with onnxruntime.
* :mod:`.space`: what can change (channel groups, factorizable layers, int8 layers), each
  change's cost from the table, and applying a choice to a model.
* :mod:`.search`: per-layer sensitivity, the greedy path and the measured front.
"""
