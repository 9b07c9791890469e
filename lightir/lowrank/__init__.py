"""The machinery of the low-rank passes (``svd``, ``spatial-svd``, ``tucker``, ``cp``).

* :mod:`.factor`: the factorizations of one layer's weights (numpy).
* :mod:`.driver`: eligibility, rank policies, the model-wide MAC budget, rewriting a layer into
  its chain and the least-squares refit.
"""
