"""Small helpers over Relax modules shared by the lowering passes."""

from __future__ import annotations


def mutate_functions(mutator, module):
    """``module`` with each of its Relax functions rewritten by ``mutator``.

    ``mutator`` is a ``relax.expr_functor.mutator`` class's instance made on ``module``.
    """
    from tvm import relax

    for var, func in module.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(var, mutator.visit_expr(func))
    return mutator.builder_.get()
