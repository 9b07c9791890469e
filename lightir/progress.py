"""Progress bars for the steps that can take more than a couple of seconds.

``int8`` calibration and bias correction, the channel scorer's groups, low-rank
factorization, ``compress``'s sensitivity and front, and a lossy pass's strength trials show
a bar (tqdm) on stderr: only on a terminal (tqdm disables itself when stderr is piped to a
file or a log), only after ``DELAY`` seconds (a quick step stays silent; set
``LIGHTIR_PROGRESS_DELAY`` to change it), never with ``lightir-opt --quiet`` or after
``lightir.progress.enabled = False``. Bars are removed when their step ends, so the table
that follows reads as before. TVM tuning reports its own progress lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

DELAY = float(os.environ.get("LIGHTIR_PROGRESS_DELAY", "2"))
enabled = True


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = ""):
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``), or a silent one."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        delay=DELAY,
        disable=None if enabled else True,  # None: off when stderr is not a terminal
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
