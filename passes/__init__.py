"""Built-in passes; importing this package registers them (``lightir.passes``)."""

from lightir.passes import (  # noqa: F401  (registration)
    bias_correct,
    binary,
    cleanup,
    compress,
    cp,
    equalize,
    fold_bn,
    fp16,
    int4_weights,
    int8,
    int8_weights,
    merge_branches,
    merge_linear,
    prune,
    share_weights,
    sparsify,
    spatial_svd,
    svd,
    ternary,
    tucker,
    upgrade_opset,
)
from lightir.registry import register_pipeline

register_pipeline(
    "fold-bn-cleanup",
    "fold-bn,cleanup",
    "Fold BatchNormalization into the linear ops, then clean up.",
)

register_pipeline(
    "reparam",
    "fold-bn,merge-branches,merge-linear,cleanup",
    "Structural reparameterization: fold BN, merge branches and linear chains, to a fixpoint.",
    fixpoint=True,
)
