"""The report step: ``summary.json`` (:class:`mosaic_ray.report.summary.Summary`),
``report/report.md`` and its plots, from every earlier step's stored outputs. It always runs
(it is cheap and reads the latest results)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from mosaic_ray import layout
from mosaic_ray.report.report import REPORT_NAME, write_report
from mosaic_ray.report.summary import build_summary
from mosaic_ray.stages.step import Context, Step, needs_of

log = logging.getLogger(__name__)


def run_report(ctx: Context) -> dict:
    """Write the summary and the report; returns ``{"report": uri, "summary": uri}``."""
    st = ctx.storage
    summary = build_summary(ctx.cfg, st, ctx.timings, fingerprints=ctx.fingerprints,
                            records={s.name: s.record for s in ctx.steps if s.record})
    if summary.stale_steps:
        log.warning("[report] steps made under other inputs than this config: %s (run `mosaic-ray run` "
                    "to redo them)", ", ".join(summary.stale_steps))
    st.write_json(layout.SUMMARY, summary.as_dict())
    with tempfile.TemporaryDirectory() as d:
        write_report(summary, d)
        for f in sorted(Path(d).iterdir()):
            st.write_bytes(f"{layout.REPORT}/{f.name}", f.read_bytes())
    return {"report": st.uri(f"{layout.REPORT}/{REPORT_NAME}"), "summary": st.uri(layout.SUMMARY)}


#: the report step (needs the select step; reports whatever grid cells are stored)
STEP = Step("report", run_report,
            needs=needs_of({layout.INGEST_SUMMARY: "ingest", layout.BASE_EVAL: "base", layout.LAWS: "select",
                            layout.MANIFEST: "select"}),
            outputs=(layout.SUMMARY, layout.REPORT), record=None,
            describe=lambda p: p["report"])
