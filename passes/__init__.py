"""Built-in passes; importing this package registers them (``lightir.passes``)."""

from lightir.registry import register_pipeline
from lightir.passes import cleanup, fold_bn  # noqa: F401  (registration)

register_pipeline(
    "fold-bn-cleanup",
    "fold-bn,cleanup",
    "Fold BatchNormalization into the linear ops, then clean up.",
)
