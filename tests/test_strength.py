"""A lossy pass given no strength runs at the strongest setting that meets its budget."""

from __future__ import annotations

import lightir
from lightir.pipeline import expand, parse_pipeline


def test_prune_without_a_ratio_is_kept_where_the_default_is_rolled_back():
    default = lightir.optimize("zoo:mobilenetv2", "prune{ratio=0.3}").report
    assert default.record("prune").status == "rolled-back"  # the old default ratio
    result = lightir.optimize("zoo:mobilenetv2", "prune")
    record = result.report.record("prune")
    assert result.report.ok and record.status == "changed"
    searched = record.stats["strength"]
    assert searched["option"] == "ratio" and searched["chosen"] < 0.3
    tried = searched["tried"]
    assert tried[str(searched["chosen"])] == "meets"
    stronger = [v for v in tried if float(v) > searched["chosen"]]
    assert stronger and all("cosine" in tried[v] for v in stronger)  # each missed the budget
    assert result.report.final.macs < result.report.original.macs


def test_no_value_meets_the_budget_is_a_decline_naming_the_weakest():
    report = lightir.optimize("zoo:vgg", "prune").report
    record = report.record("prune")
    assert report.ok and record.status == "declined"
    assert "no ratio from 0.6 to 0.1 meets" in record.message and "ratio=0.1" in record.message


def test_given_strengths_and_exact_passes_are_not_searched():
    def searched(text):
        return [p.searches_strength for p in expand(parse_pipeline(text))]

    assert searched("prune,svd,tucker") == [True, True, True]
    assert searched("prune{ratio=0.3},prune{target-macs=0.5},prune{round=4}") == [
        False,
        False,
        True,
    ]
    assert searched("svd{rank=8},tucker{energy=0.9},cp{target-macs=0.7}") == [False] * 3
    assert searched("cp") == [False]  # ALS at every rank per trial: too slow to search
    assert searched("fold-bn,cleanup,int8,fp16") == [False] * 4
    result = lightir.optimize("zoo:resnet", "prune{ratio=0.3}")
    assert "strength" not in result.report.record("prune").stats


def test_low_rank_without_a_policy_searches_the_energy():
    result = lightir.optimize("zoo:digits", "svd")
    searched = result.report.record("svd").stats["strength"]
    assert result.report.ok and searched["option"] == "energy"
    assert searched["tried"][str(searched["chosen"])] in ("meets", "unchanged")
