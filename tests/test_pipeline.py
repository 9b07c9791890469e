from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

import lightir
from lightir.errors import UsageError
from lightir.pipeline import expand, format_pipeline, parse_pipeline


@pytest.fixture
def optioned_pass(throwaway_passes):
    @dataclass(frozen=True)
    class Options:
        ratio: float = 0.5
        round: int = 8
        fast: bool = False
        mode: Literal["l1", "l2"] = "l1"

        def __post_init__(self):
            if not 0 < self.ratio < 1:
                raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")

    @lightir.register_pass("demo-prune", contract="exact")
    class DemoPrune(lightir.Pass):
        """A pass with options, for parser tests."""

        def run(self, model, context):
            return lightir.PassResult(model, modified=False)

    DemoPrune.Options = Options
    return DemoPrune


def test_round_trip_is_canonical(optioned_pass):
    specs = parse_pipeline(" fold-bn , demo-prune{ mode=l2, ratio=0.3, round=8 },cleanup ")
    text = format_pipeline(specs)
    # whitespace gone, options in field order, default round=8 left out
    assert text == "fold-bn,demo-prune{ratio=0.3,mode=l2},cleanup"
    assert format_pipeline(parse_pipeline(text)) == text


def test_a_strength_given_at_its_default_stays_in_the_canonical_text():
    # prune's default ratio is 0.3, but "prune" searches its strength and
    # "prune{ratio=0.3}" does not: the report's pipeline text must say which ran.
    assert format_pipeline(parse_pipeline("prune{ratio=0.3,round=0}")) == "prune{ratio=0.3}"
    assert format_pipeline(parse_pipeline("prune")) == "prune"
    assert format_pipeline(parse_pipeline("svd{energy=0.0}")) == "svd{energy=0.0}"


def test_option_types_are_converted(optioned_pass):
    (spec,) = parse_pipeline("demo-prune{ratio=0.25,round=16,fast=yes}")
    assert spec.options == {"ratio": 0.25, "round": 16, "fast": True}
    (instance,) = expand([spec])
    assert instance.options.round == 16 and instance.options.fast is True


def test_named_pipeline_expands():
    passes = expand(parse_pipeline("fold-bn-cleanup"))
    assert [p.name for p in passes] == ["fold-bn", "cleanup"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fold-bn,clenup", "did you mean 'cleanup'"),
        ("fold_bn", "is not a pass name"),
        ("demo-prune{ration=0.3}", "did you mean 'ratio'"),
        ("demo-prune{ratio=abc}", "expects float"),
        ("demo-prune{ratio=1.5}", "ratio must be in (0, 1)"),
        ("demo-prune{mode=l3}", "must be one of l1, l2"),
        ("demo-prune{fast=maybe}", "expects true or false"),
        ("demo-prune{ratio=0.3", "missing '}'"),
        ("fold-bn,,cleanup", "empty item"),
        ("", "empty pipeline"),
        ("cleanup{x=1}", "has no option 'x'"),
        ("demo-prune{ratio=0.3,ratio=0.4}", "given twice"),
    ],
)
def test_bad_pipelines_name_the_problem(optioned_pass, text, message):
    with pytest.raises(UsageError, match=None) as info:
        parse_pipeline(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
