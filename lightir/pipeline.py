"""Textual pipelines: ``"fold-bn,prune{ratio=0.3,round=8},cleanup"``.

Grammar::

    pipeline := item ("," item)*
    item     := NAME ("{" option ("," option)* "}")?
    option   := KEY "=" VALUE

``NAME`` is a registered pass or named pipeline; ``KEY`` a field of the pass's options
dataclass; ``VALUE`` is converted to the field's type (bool: true/false, int, float, str, or
one of a ``Literal``'s choices). :func:`format_pipeline` prints a parsed pipeline back in
canonical form: whitespace removed, options in field order, defaults left out.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from lightir import registry
from lightir.errors import UsageError
from lightir.pass_base import Pass, option_fields

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")


@dataclass
class PassSpec:
    """One pipeline item: a pass or named-pipeline name and its options as given."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        body = ",".join(f"{k.replace('_', '-')}={format_value(v)}" for k, v in self.options.items())
        return f"{self.name}{{{body}}}"


def format_value(value: Any) -> str:
    """A value as pipeline text (``true``/``false`` for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}?"
    return f"known: {', '.join(candidates)}"


def _split_top_level(text: str, where: str) -> list[str]:
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
            if depth > 1:
                raise UsageError(f"pipeline {where!r}: nested '{{' at position {index}")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise UsageError(f"pipeline {where!r}: unmatched '}}' at position {index}")
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise UsageError(f"pipeline {where!r}: missing '}}'")
    items.append(text[start:])
    return items


def parse_pipeline(text: str) -> list[PassSpec]:
    """Parse pipeline text into validated :class:`PassSpec` items.

    Raises:
        UsageError: empty items, unknown names or options, or values of the wrong type, with
            a "did you mean" suggestion.

    """
    registry.load_builtins()
    compact = re.sub(r"\s+", "", text)
    if not compact:
        raise UsageError("empty pipeline; give pass names such as -p fold-bn,cleanup")
    specs = []
    for item in _split_top_level(compact, text):
        if not item:
            raise UsageError(f"pipeline {text!r}: empty item (doubled or trailing comma)")
        match = re.fullmatch(r"([^{}]+)(?:\{(.*)\})?", item)
        if match is None:
            raise UsageError(f"pipeline {text!r}: cannot read item {item!r}")
        name, body = match.group(1), match.group(2)
        if not _NAME.match(name):
            raise UsageError(f"pipeline {text!r}: {name!r} is not a pass name")
        raw_options = {}
        if body:
            for option in _split_top_level(body, text):
                key, sep, value = option.partition("=")
                if not sep or not key:
                    raise UsageError(f"pass {name!r}: option {option!r} is not KEY=VALUE")
                if key in raw_options:
                    raise UsageError(f"pass {name!r}: option {key!r} given twice")
                raw_options[key] = value
        specs.append(_validate(name, raw_options))
    return specs


def _validate(name: str, raw_options: dict[str, str]) -> PassSpec:
    pass_cls = registry.get_pass(name)
    if pass_cls is None:
        named = registry.get_pipeline(name)
        if named is None:
            candidates = sorted([*registry.all_passes(), *registry.all_pipelines()])
            raise UsageError(f"unknown pass {name!r}; {_did_you_mean(name, candidates)}")
        if raw_options:
            raise UsageError(f"pipeline {name!r} takes no options; give them to its passes")
        return PassSpec(name)
    fields = {f.name: f for f in option_fields(pass_cls.Options)}
    hints = typing.get_type_hints(pass_cls.Options) if fields else {}
    options: dict[str, Any] = {}
    renamed = getattr(pass_cls.Options, "RENAMED", {})  # old key -> new key, both dashed
    for dashed, raw in raw_options.items():
        if dashed in renamed:
            logger.warning(
                "pass %r: option %r is now %r; the old name will be removed",
                name,
                dashed,
                renamed[dashed],
            )
            dashed = renamed[dashed]
        key = dashed.replace("-", "_")
        if key in options:
            raise UsageError(f"pass {name!r}: option {dashed!r} is given twice")
        if key not in fields:
            known = sorted(f.replace("_", "-") for f in fields) or ["(this pass takes no options)"]
            raise UsageError(
                f"pass {name!r} has no option {dashed!r}; {_did_you_mean(dashed, known)}"
            )
        options[key] = _convert(name, key, raw, hints[key])
    ordered = {k: options[k] for k in fields if k in options}
    spec = PassSpec(name, ordered)
    make_options(pass_cls, spec)  # runs the dataclass's own validation now
    return spec


def _convert(pass_name: str, key: str, raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        if raw.lower() in ("none", "null"):
            return None
        hint, origin = args[0], typing.get_origin(args[0])
    where = f"pass {pass_name!r}: option {key.replace('_', '-')!r}"
    if origin is typing.Literal:
        choices = [str(c) for c in typing.get_args(hint)]
        if raw not in choices:
            raise UsageError(f"{where} must be one of {', '.join(choices)}; got {raw!r}")
        return raw
    if hint is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"{where} expects true or false; got {raw!r}")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise UsageError(f"{where} expects {hint.__name__}; got {raw!r}") from None
    return raw


def make_options(pass_cls: type[Pass], spec: PassSpec) -> Any:
    """Build the options dataclass of ``pass_cls`` from ``spec``; bad values raise UsageError."""
    try:
        return pass_cls.Options(**spec.options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pass {spec.name!r}: {exc}") from None


def format_pipeline(specs: list[PassSpec]) -> str:
    """The canonical text of a parsed pipeline; ``parse_pipeline`` reads it back unchanged."""
    canonical = []
    for spec in specs:
        pass_cls = registry.get_pass(spec.name)
        options = dict(spec.options)
        if pass_cls is not None:
            defaults = {
                f.name: f.default
                for f in option_fields(pass_cls.Options)
                if f.default is not dataclasses.MISSING
            }
            # A strength given at its default value still says "do not search the strength"
            # (lightir.strength): it stays, so the text runs what was run.
            strength = getattr(pass_cls, "strength", None)
            kept = set() if strength is None else {strength.option, *strength.alternatives}
            kept = {key.replace("-", "_") for key in kept}
            options = {
                k: v
                for k, v in options.items()
                if k.replace("-", "_") in kept or defaults.get(k, object()) != v
            }
        canonical.append(str(PassSpec(spec.name, options)))
    return ",".join(canonical)


MAX_FIXPOINT_ROUNDS = 8


@dataclass
class Fixpoint:
    """Passes repeated until a round changes nothing (from a ``fixpoint`` named pipeline)."""

    name: str
    passes: list


def expand(specs: list[PassSpec], _seen: tuple[str, ...] = ()) -> list:
    """Instantiate the passes of ``specs``, expanding named pipelines (cycles refused).

    Items are :class:`~lightir.pass_base.Pass` instances or :class:`Fixpoint` groups.
    """
    passes: list = []
    for spec in specs:
        pass_cls = registry.get_pass(spec.name)
        if pass_cls is not None:
            pass_ = pass_cls(make_options(pass_cls, spec))
            pass_.given = frozenset(spec.options)
            passes.append(pass_)
            continue
        named = registry.get_pipeline(spec.name)
        assert named is not None, spec.name
        if spec.name in _seen:
            raise UsageError(f"pipeline {spec.name!r} includes itself")
        inner = expand(parse_pipeline(named.text), (*_seen, spec.name))
        if named.fixpoint:
            passes.append(Fixpoint(spec.name, inner))
        else:
            passes.extend(inner)
    return passes


def flatten(items: list) -> list[Pass]:
    """Every pass instance in ``items``, fixpoint groups opened (each pass once)."""
    result: list[Pass] = []
    for item in items:
        result.extend(flatten(item.passes) if isinstance(item, Fixpoint) else [item])
    return result
