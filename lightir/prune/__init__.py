"""The machinery of the ``prune`` pass.

* :mod:`.importance`: channel scores (weight norms, BN gammas, activations, and the output
  error a removal leaves in the consuming layers).
* :mod:`.plan`: the planner: groups + scores + budget -> the components to remove (it never
  changes the model it plans for).
* :mod:`.surgery`: removing components from a model: weights, group counts, Split sizes, and
  the bias compensation.
"""
