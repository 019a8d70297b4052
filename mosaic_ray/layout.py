"""The run layout: where every step's outputs lie under ``<output_dir>/<name>/``.

Every path below is relative to the run's :class:`~mosaic_ray.storage.Storage` root (a local
folder or ``s3://bucket/prefix``). A step's completion record is ``<record>/_SUCCESS.json``
(:meth:`Storage.mark_done`), written by the step runner (:mod:`mosaic_ray.stages.step`) once
the step's outputs are complete; it holds the step's fingerprint and parts and every output file
with its size. ``<record>/_STARTED.json`` holds the fingerprint a step last started under.

::

    ingest/summary.json             clip / quarantine counts, splits        (ingest)
    ingest/clips/<split>/*.parquet  clip shards: train, pool, calibration, test (ingest)
    ingest/quarantine.parquet       every candidate that did not become a clip
    planner/vocabulary.npy          (K, 8, 3) trajectory anchors             (base)
    planner/base.pt                 the base planner                         (base)
    planner/base_eval.json          its calibration and test EPDMS, the human's (base)
    planner/external.pt             score.checkpoint, copied in              (score)
    score/scores/*.parquet          one row per pool frame (load_scores: per clip) (score)
    score_train/scores/*.parquet    one row per D_train clip (coreset only)  (score_train)
    domains/<variant>.parquet|json  domain label per pool clip, description  (domains)
    pilot/<set>.parquet             ΔU per (domain, n, seed)                 (pilot)
    select/laws.json                laws per pilot set, budgets, methods     (select)
    select/manifest.parquet         nested selections per method and budget  (select)
    train/results/<cell>.json       one final training's test result         (train)
    summary.json, report/           the typed summary and report.md + plots  (report)
    timings.json                    wall seconds per step
"""

from __future__ import annotations

from mosaic_ray.data.split import SPLITS  # noqa: F401  (split names are defined once, in data/split.py)

INGEST = "ingest"
INGEST_SUMMARY = "ingest/summary.json"
QUARANTINE = "ingest/quarantine.parquet"

PLANNER = "planner"
VOCABULARY = "planner/vocabulary.npy"
BASE_CHECKPOINT = "planner/base.pt"
BASE_EVAL = "planner/base_eval.json"
BASE_RECORD = "planner/base"
EXTERNAL_CHECKPOINT = "planner/external.pt"

SCORE = "score"
SCORE_TRAIN = "score_train"

DOMAINS = "domains"
PILOT = "pilot"
SELECT = "select"
LAWS = "select/laws.json"
MANIFEST = "select/manifest.parquet"
TRAIN = "train"
TRAIN_RESULTS = "train/results"
REPORT = "report"
SUMMARY = "summary.json"
TIMINGS = "timings.json"


def clips(split: str) -> str:
    """Folder of one split's clip shards (``split`` in :data:`SPLITS`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    return f"ingest/clips/{split}"


def scores(record: str = SCORE) -> str:
    """Folder of a score step's output shards (``score`` or ``score_train``)."""
    return f"{record}/scores"


def domain_labels(variant: str) -> str:
    return f"domains/{variant}.parquet"


def domain_description(variant: str) -> str:
    return f"domains/{variant}.json"


def pilot_table(pilot_set: str) -> str:
    return f"pilot/{pilot_set}.parquet"


def pilot_record(pilot_set: str) -> str:
    return f"pilot/{pilot_set}"


def planner_checkpoint(name: str) -> str:
    return f"planner/{name}.pt"


def cell_result(key: str) -> str:
    """A grid cell's stored result (``key`` = ``<method>-b<budget>-s<seed>``)."""
    return f"train/results/{key}.json"
