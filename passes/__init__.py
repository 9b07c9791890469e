"""Built-in passes; importing this package registers them (``lightir.passes``)."""

from lightir.passes import cleanup, fold_bn  # noqa: F401  (registration)

from lightir.registry import register_pipeline

register_pipeline(
    "fold-bn-cleanup",
    "fold-bn,cleanup",
    "Fold BatchNormalization into the linear ops, then clean up.",
)
