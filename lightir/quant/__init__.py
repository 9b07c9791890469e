"""The machinery of the quantizing passes (``int8``, ``int8-weights``, ``int4-weights``, ...).

* :mod:`.calibration`: activation ranges from streamed histograms (minmax, percentile, entropy,
  mse).
* :mod:`.codes`: symmetric weight codes, the weight axis of each op, and the compact weight
  encodings (DequantizeLinear, codebook + Gather) the weight-storage passes write.
"""
