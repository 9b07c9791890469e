"""What a run did (:class:`Report`, one :class:`PassRecord` per step) and its renderings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightir.analysis.cost import ModelCost
from lightir.metrics import Score
from lightir.pass_base import Pass
from lightir.verify import OutputMetrics


@dataclass
class PassRecord:
    """What happened in one pass."""

    index: int
    name: str
    contract: str
    status: str  # "changed", "unchanged", "rolled-back"
    seconds: float
    verify_seconds: float
    cost: ModelCost
    tolerance: str = ""
    vs_previous: list[OutputMetrics] = field(default_factory=list)
    vs_original: list[OutputMetrics] = field(default_factory=list)
    message: str = ""
    declines: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    # Why a rolled-back pass failed: raised, structure, runtime, outputs or contract
    # (:class:`lightir.verify.Verdict`); "budget" for a declined pass that could not meet
    # the user's budget (:class:`lightir.errors.BudgetUnmet`); empty otherwise.
    failure: str = ""
    # The model an exact pass that broke its contract fails on alone (lightir.bisect); not
    # in the JSON: lightir-opt writes it next to the output.
    reproducer: Any = field(default=None, repr=False)

    @classmethod
    def begin(cls, index: int, pass_: Pass, cost: ModelCost) -> PassRecord:
        """The record of a pass about to run (unchanged until it says otherwise)."""
        return cls(index, pass_.name, pass_.contract.describe(), "unchanged", 0.0, 0.0, cost)

    def as_dict(self) -> dict:
        """Plain dict for JSON."""
        return {
            "index": self.index,
            "pass": self.name,
            "contract": self.contract,
            "status": self.status,
            "seconds": self.seconds,
            "verify_seconds": self.verify_seconds,
            "cost": self.cost.as_dict(),
            "tolerance": self.tolerance,
            "vs_previous": [m.as_dict() for m in self.vs_previous],
            "vs_original": [m.as_dict() for m in self.vs_original],
            "message": self.message,
            "declines": self.declines,
            "stats": self.stats,
            "failure": self.failure,
        }


@dataclass
class Report:
    """The whole run: the pipeline, each pass, the accumulated drift and the verdict."""

    model: str
    pipeline: str
    verify: str
    inputs: str
    original: ModelCost
    records: list[PassRecord] = field(default_factory=list)
    final: ModelCost | None = None
    drift: list[OutputMetrics] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    rounding_noise: float = 0.0
    canonicalize: PassRecord | None = None  # import canonicalization, before the passes
    # The user's metric (lightir.metrics): name, original and final Score dicts, drop.
    metric: dict | None = None
    skipped: list[str] = field(default_factory=list)  # not run after a rollback
    # Op types and linear layers of the input and the result (analysis.cost.model_profile):
    # the report's before/after tables.
    profile: dict[str, dict] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No pass was rolled back and no check failed."""
        return not self.failures

    def record(self, name: str) -> PassRecord:
        """The last record of the pass called ``name`` (a KeyError when it did not run)."""
        for record in reversed(self.records):
            if record.name == name:
                return record
        raise KeyError(f"no pass {name!r} in this run: {[r.name for r in self.records]}")

    def provenance(self) -> dict:
        """What was done and how it was checked: the record written into the output model.

        Per pass: its contract, what became of it and, where it was verified, the worst
        output error and cosine against the original; then the run's drift and metric.
        """
        from lightir import __version__

        passes = []
        for record in self.records:
            entry = {"pass": record.name, "contract": record.contract, "status": record.status}
            if record.vs_original:
                rel, cos, top1 = _worst(record.vs_original)
                entry.update(rel_error=rel, cosine=cos)
                if top1 != "-":
                    entry["top1"] = top1
            if record.tolerance:
                entry["tolerance"] = record.tolerance
            passes.append(entry)
        provenance = {
            "tool": "lightir",
            "version": __version__,
            "pipeline": self.pipeline,
            "verify": self.verify,
            "inputs": self.inputs,
            "passes": passes,
            "macs": [self.original.macs, (self.final or self.original).macs],
            "params": [self.original.params, (self.final or self.original).params],
        }
        if self.drift:
            rel, cos, _ = _worst(self.drift)
            provenance["drift"] = {"rel_error": rel, "cosine": cos}
        if self.metric:
            provenance["metric"] = {
                "name": self.metric.get("name"),
                "drop": self.metric.get("drop"),
                "samples": (self.metric.get("final") or {}).get("samples"),
            }
        return provenance

    def as_dict(self) -> dict:
        """Plain dict for ``--report FILE.json``."""
        return {
            "provenance": self.provenance(),
            "model": self.model,
            "pipeline": self.pipeline,
            "verify": self.verify,
            "inputs": self.inputs,
            "ok": self.ok,
            "failures": self.failures,
            "seconds": self.seconds,
            "verify_seconds": self.verify_seconds,
            "rounding_noise": self.rounding_noise,
            "original": self.original.as_dict(),
            "canonicalize": self.canonicalize.as_dict() if self.canonicalize else None,
            "final": self.final.as_dict() if self.final else None,
            "passes": [r.as_dict() for r in self.records],
            "drift": [m.as_dict() for m in self.drift],
            "metric": self.metric,
            "skipped": self.skipped,
            "profile": self.profile,
        }


def _si(number: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.2f}{unit}"
    return f"{number:.0f}"


def _worst(metrics: list[OutputMetrics]) -> tuple[str, str, str]:
    if not metrics:
        return "-", "-", "-"
    rel = max(m.rel_error for m in metrics)
    cos = min(m.cosine for m in metrics)
    top1 = [m.top1 for m in metrics if m.top1 is not None]
    return f"{rel:.2e}", f"{cos:.6f}", f"{min(top1):.3f}" if top1 else "-"


def pass_table(report: Report) -> list[list[str]]:
    """The per-pass table: a header row, the input, then one row per step."""
    header = [
        "#",
        "pass",
        "contract",
        "status",
        "time s",
        "verify s",
        "nodes",
        "params",
        "MACs",
        "bytes",
        "rel err prev",
        "rel err orig",
        "cos orig",
        "top1 orig",
    ]
    rows = [header]
    o = report.original
    rows.append(
        [
            "0",
            "(input)",
            "",
            "",
            "",
            "",
            str(o.nodes),
            _si(o.params),
            _si(o.macs),
            _si(o.bytes),
            "",
            "",
            "",
            "",
        ]
    )
    records = [report.canonicalize, *report.records] if report.canonicalize else report.records
    for r in records:
        prev_rel = _worst(r.vs_previous)[0]
        orig_rel, orig_cos, orig_top1 = _worst(r.vs_original)
        rows.append(
            [
                str(r.index),
                r.name,
                r.contract,
                r.status,
                f"{r.seconds:.3f}",
                f"{r.verify_seconds:.3f}",
                str(r.cost.nodes),
                _si(r.cost.params),
                _si(r.cost.macs),
                _si(r.cost.bytes),
                prev_rel,
                orig_rel,
                orig_cos,
                orig_top1,
            ]
        )
    return rows


def summary_lines(report: Report) -> list[str]:
    """What the table does not show: the run, totals, judgements, no-ops, what was skipped."""
    lines = []
    o = report.original
    drift_rel, drift_cos, drift_top1 = _worst(report.drift)
    lines.append(
        f"model {report.model}; pipeline {report.pipeline}; "
        + (
            "verify structural (no numeric check)"
            if report.verify == "structural"
            else f"verify {report.verify} on {report.inputs}"
        )
    )
    final = report.final or report.original
    lines.append(
        f"total {report.seconds:.2f}s (verification {report.verify_seconds:.2f}s); nodes "
        f"{o.nodes} -> {final.nodes}, params {_si(o.params)} -> {_si(final.params)}, MACs "
        f"{_si(o.macs)} -> {_si(final.macs)}; drift vs input: rel {drift_rel}, cos "
        f"{drift_cos}, top1 {drift_top1}"
    )
    for record in report.records:
        judged = [m for m in record.vs_previous if not m.is_probe and m.interval is not None]
        if record.contract.startswith("lossy") and judged:
            worst = min(judged, key=lambda m: m.agreement)
            low, high = worst.interval
            lines.append(
                f"#{record.index} {record.name}: judged on {worst.samples} samples; worst "
                f"agreement {worst.agreement:.6f}, 95% interval [{low:.6f}, {high:.6f}] "
                f"('{worst.output}')"
                + (
                    "; fewer than 32 samples: weak evidence (--samples N)"
                    if worst.samples < 32
                    else ""
                )
            )
    for record in report.records:
        if record.status == "unchanged" and record.message:
            lines.append(f"#{record.index} {record.name} unchanged: {record.message}")
    if report.skipped:
        rolled = next((r for r in reversed(report.records) if r.status == "rolled-back"), None)
        after = f" after #{rolled.index} {rolled.name} was rolled back" if rolled else ""
        lines.append(
            f"stopped{after}: {', '.join(report.skipped)} did not run (--keep-going runs "
            "them on the model as it is)"
        )
    if report.metric and "final" in report.metric:
        m = report.metric
        original, result = m["original"], m["final"]
        lines.append(
            f"metric {m['name']} on {result['samples']} held-out samples (95% interval): "
            f"original {Score(**original).describe()}, result {Score(**result).describe()}, "
            f"drop {m['drop']:.4f}"
        )
    return lines


def render_table(report: Report) -> str:
    """The per-pass table printed on stderr by ``lightir-opt``."""
    rows = pass_table(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + summary_lines(report))


def render_explain(report: Report) -> str:
    """The reasons rewrites did not fire, per pass (``--explain``)."""
    lines = []
    if report.canonicalize is not None:
        done = "; ".join(f"{key}: {value}" for key, value in report.canonicalize.stats.items())
        lines.append(f"import canonicalization ({report.canonicalize.status}): {done}")
    for r in report.records:
        if not r.declines:
            lines.append(f"pass #{r.index} {r.name}: no declined matches")
            continue
        lines.append(f"pass #{r.index} {r.name}: {len(r.declines)} declined match(es)")
        lines.extend(f"  - {reason}" for reason in r.declines)
    return "\n".join(lines)


def render_timing(report: Report) -> str:
    """Pass time against verification time (``--timing``)."""
    lines = [f"{'pass':<24} {'run s':>8} {'verify s':>9}"]
    for r in report.records:
        lines.append(f"{r.name:<24} {r.seconds:>8.3f} {r.verify_seconds:>9.3f}")
    share = report.verify_seconds / report.seconds if report.seconds else 0.0
    lines.append(
        f"{'total':<24} {report.seconds:>8.3f} {report.verify_seconds:>9.3f}  "
        f"(verification {share:.0%} of the run)"
    )
    return "\n".join(lines)
