"""Registration of passes and named pipelines, built-in and from plugins.

A custom pass is registered exactly like a built-in one::

    @register_pass("scale-input", contract="exact")
    class ScaleInput(Pass):
        ...

or, for a plain function ``fn(model, context) -> bool | PassResult | None``::

    @register_pass("my-cleanup", contract="exact", summary="...")
    def my_cleanup(model, context): ...

Plugins are found through the ``lightir.passes`` entry-point group (each entry names a module
whose import registers passes) or loaded with ``--load-pass-plugin MODULE_OR_FILE.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from lightir.errors import UsageError
from lightir.pass_base import EXACT, Contract, Pass, PassResult

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lightir.passes"

_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, NamedPipeline] = {}
_builtins_loaded = False
_plugins_loaded = False


@dataclass(frozen=True)
class NamedPipeline:
    """A pipeline registered under a name; it expands to its passes when parsed."""

    name: str
    text: str
    summary: str
    fixpoint: bool = False


def _as_contract(contract: Contract | str) -> Contract:
    if isinstance(contract, Contract):
        return contract
    if contract == "exact":
        return EXACT
    raise ValueError(
        f"contract {contract!r}: use 'exact' or Contract.lossy(rel_error=..., min_cosine=...)"
    )


def register_pass(
    name: str,
    *,
    contract: Contract | str = EXACT,
    summary: str | None = None,
    options: type | None = None,
    replace: bool = False,
) -> Callable[[Any], Any]:
    """Register a :class:`Pass` subclass or a function under ``name``.

    Args:
        name: the pipeline name (``fold-bn``); lower case, digits and dashes.
        contract: ``"exact"`` or a :class:`Contract`.
        summary: one line for ``--list-passes``; defaults to the docstring's first line.
        options: for a function pass, its options dataclass (passed as ``options=``).
        replace: allow replacing an existing registration (tests, overrides).

    """
    contract = _as_contract(contract)
    if not name or not all(c.isalnum() or c == "-" for c in name) or name != name.lower():
        raise ValueError(f"pass name {name!r}: use lower case letters, digits and '-'")

    def decorate(target: Any) -> Any:
        if name in _PASSES or name in _PIPELINES:
            if not replace and _PASSES.get(name) is not target:
                raise ValueError(f"a pass or pipeline named {name!r} is already registered")
        if inspect.isclass(target) and issubclass(target, Pass):
            cls = target
        elif callable(target):
            cls = _function_pass(target, options)
        else:
            raise TypeError(f"register_pass({name!r}) needs a Pass subclass or a function")
        cls.name = name
        cls.contract = contract
        cls.summary = summary or _first_doc_line(target) or name
        _PASSES[name] = cls
        return target

    return decorate


def register_pipeline(
    name: str, text: str, summary: str, *, fixpoint: bool = False, replace: bool = False
) -> None:
    """Register ``text`` (``"fold-bn,cleanup"``) as the pipeline ``name``.

    With ``fixpoint=True`` the passes run again, round after round, until a round changes
    nothing (at most :data:`lightir.pipeline.MAX_FIXPOINT_ROUNDS` rounds).
    """
    if (name in _PASSES or name in _PIPELINES) and not replace:
        raise ValueError(f"a pass or pipeline named {name!r} is already registered")
    _PIPELINES[name] = NamedPipeline(name, text, summary, fixpoint)


def unregister(name: str) -> None:
    """Remove a pass or pipeline (used by tests that register throw-away passes)."""
    _PASSES.pop(name, None)
    _PIPELINES.pop(name, None)


def _function_pass(fn: Callable[..., Any], options_cls: type | None) -> type[Pass]:
    wants_options = "options" in inspect.signature(fn).parameters

    def run(self: Pass, model: Any, context: Any) -> PassResult:
        kwargs = {"options": self.options} if wants_options else {}
        outcome = fn(model, context, **kwargs)
        if isinstance(outcome, PassResult):
            return outcome
        # None means the function did not say: assume it changed something.
        return PassResult(model, modified=True if outcome is None else bool(outcome))

    attrs: dict[str, Any] = {"run": run, "__doc__": fn.__doc__, "__module__": fn.__module__}
    if options_cls is not None:
        attrs["Options"] = options_cls
    return type(f"FunctionPass_{fn.__name__}", (Pass,), attrs)


def _first_doc_line(target: Any) -> str:
    doc = inspect.getdoc(target) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def load_builtins() -> None:
    """Import the built-in passes (``lightir.passes``) and the installed plugins, once."""
    global _builtins_loaded, _plugins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("lightir.passes")
    if not _plugins_loaded:
        _plugins_loaded = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as exc:  # a broken plugin must not break lightir
                logger.warning("pass plugin %s failed to load: %s", entry.value, exc)


def load_pass_plugin(spec: str) -> None:
    """Import a plugin given as a module name or a path to a ``.py`` file."""
    import_module_or_file(spec, "--load-pass-plugin")


def import_module_or_file(spec: str, flag: str) -> ModuleType:
    """Import ``spec``, a module name or a path to a ``.py`` file; UsageError naming ``flag``."""
    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise UsageError(f"{flag} {spec}: no such file")
            module_name = f"lightir_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{flag} {spec}: import failed ({type(exc).__name__}: {exc})") from exc


def get_pass(name: str) -> type[Pass] | None:
    """The pass class registered as ``name``, or ``None``."""
    load_builtins()
    return _PASSES.get(name)


def get_pipeline(name: str) -> NamedPipeline | None:
    """The named pipeline ``name``, or ``None``."""
    load_builtins()
    return _PIPELINES.get(name)


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name."""
    load_builtins()
    return dict(sorted(_PASSES.items()))


def all_pipelines() -> dict[str, NamedPipeline]:
    """Every registered named pipeline, by name."""
    load_builtins()
    return dict(sorted(_PIPELINES.items()))
