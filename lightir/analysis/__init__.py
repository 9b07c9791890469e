"""Read-only analyses of a model: they compute facts and numbers and never mutate the graph.

* :mod:`.cost`: nodes, parameters, MACs and weight bytes.
* :mod:`.channels`: the channel dependency graph behind structured pruning.
* :mod:`.branches` and :mod:`.conv_algebra`: a value as a linear map of an input, and exact
  algebra on convolution kernels (behind the merge passes).
* :mod:`.bn_stats`: activation statistics read off BatchNormalization parameters.
* :mod:`.reconstruct`: least-squares refits and output-error removal costs on calibration
  activations (used by prune and the low-rank passes).
"""
