"""Human-readable rendering of a :class:`~lightir.manager.Report`."""

from __future__ import annotations

from lightir.manager import Report
from lightir.verify import OutputMetrics


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


def render_table(report: Report) -> str:
    """The per-pass table printed on stderr by ``lightir-opt``."""
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    drift_rel, drift_cos, drift_top1 = _worst(report.drift)
    lines.append(
        f"model {report.model}; pipeline {report.pipeline}; verify {report.verify} on "
        f"{report.inputs}"
    )
    final = report.final or report.original
    lines.append(
        f"total {report.seconds:.2f}s (verification {report.verify_seconds:.2f}s); nodes "
        f"{o.nodes} -> {final.nodes}, params {_si(o.params)} -> {_si(final.params)}, MACs "
        f"{_si(o.macs)} -> {_si(final.macs)}; drift vs input: rel {drift_rel}, cos "
        f"{drift_cos}, top1 {drift_top1}"
    )
    return "\n".join(lines)


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
