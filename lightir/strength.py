"""The strongest setting of a lossy pass that meets its budget (issue 15, item 5).

A lossy pass that declares a :class:`~lightir.pass_base.Strength` and is given none of its
strength options (``-p prune``, not ``-p 'prune{ratio=0.3}'``) does not run at its default:
the pass manager first runs it on copies of the model at the declared values, strongest
first, by bisection (the values are taken to be monotone: if one meets the budget, every
weaker one does). Each trial is judged against the pass's own tolerance on *selection*
samples: calibration rows the pass may fit on, or synthesized inputs drawn with another seed,
never the verification samples. The pass then runs at the strongest value that met the budget
and is verified as usual, on samples the choice never saw. When not even the weakest value
meets it, the pass is declined with what the weakest did (the model is left as it was).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from lightir import progress
from lightir.data import draw
from lightir.errors import PassDeclined
from lightir.ir_util import clone_model
from lightir.onnx_bridge import OrtModel
from lightir.pass_base import Pass, PassContext
from lightir.verify import Tolerance, compare_outputs, violations

logger = logging.getLogger(__name__)


def selection_batches(calibration, verification: list[dict], seed: int = 1) -> list[dict]:
    """Samples to choose a strength on, never the verification samples.

    ``calibration`` (the rows passes fit on) when given, else inputs shaped like
    ``verification`` drawn with another seed.
    """
    rows = sum(len(next(iter(b.values()))) for b in verification)
    if calibration is not None:
        chosen = list(calibration.batches(batch_size=max(rows, 1), limit=max(rows, 1)))
        if chosen:
            return chosen
    rng = np.random.default_rng(10_000 + seed)
    batches = [
        {name: draw(rng, array.dtype, array.shape) for name, array in batch.items()}
        for batch in verification
    ]
    return batches


def strongest(
    pass_: Pass,
    model: ir.Model,
    batches: list[dict],
    tolerance: Tolerance,
    scales: dict,
    calibration,
) -> tuple[Pass, dict]:
    """``pass_`` set to the strongest value that meets ``tolerance`` on ``batches``.

    Returns the configured pass and what was tried (for the report).
    """
    strength = pass_.strength
    values = list(strength.values)
    reference = OrtModel(model).run_all(batches)
    tried: dict = {}

    def configured(value) -> Pass:
        options = dataclasses.replace(pass_.options, **{strength.option: value})
        chosen = type(pass_)(options)
        chosen.given = pass_.given | {strength.option}
        return chosen

    # A bisection: at most one trial more than log2 of the values.
    trials = 1 + math.ceil(math.log2(max(len(values), 1)))
    shown = progress.bar(total=trials, desc=f"{pass_.name}: {strength.option} trials")

    def meets(index: int) -> bool:
        try:
            return _meets(index)
        finally:
            shown.update(1)

    def _meets(index: int) -> bool:
        value = values[index]
        trial = clone_model(model)
        try:
            result = configured(value).run(trial, PassContext(calibration))
            if not result.modified:
                tried[value] = "unchanged"
                return True
            outputs = OrtModel(result.model).run_all(batches)
            problems = violations(compare_outputs(reference, outputs, scales), tolerance)
        except Exception as exc:  # noqa: BLE001 - a failed trial is a value that does not meet
            logger.debug("strength %s=%s raised", strength.option, value, exc_info=True)
            tried[value] = f"raised {type(exc).__name__}"
            return False
        tried[value] = "meets" if not problems else problems[0]
        return not problems

    name = strength.option.replace("_", "-")
    # The first index that meets: bisection over strongest -> weakest.
    low, high = 0, len(values) - 1
    if not meets(high):
        shown.close()
        raise PassDeclined(
            f"no {name} from {values[0]} to {values[-1]} meets its "
            f"{pass_.contract.describe()} budget on the selection samples (the weakest, "
            f"{name}={values[-1]}: {tried[values[-1]]}); give {name}= to force one"
        )
    while low < high:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle + 1
    shown.close()
    value = values[low]
    logger.info("%s: %s=%s is the strongest that met its budget", pass_.name, name, value)
    report = {
        "option": name,
        "chosen": value,
        "tried": {str(k): v for k, v in sorted(tried.items(), key=lambda kv: values.index(kv[0]))},
    }
    return configured(value), report
