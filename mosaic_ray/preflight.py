"""Checks before work starts: what can be known to fail is refused before Ray starts.

:func:`preflight` runs in :func:`mosaic_ray.pipeline.run_steps` before the Ray session and
before any step. Each check runs only when one of the requested steps needs it:

=============================  ===================================  ============================
check                          needed by                            when
=============================  ===================================  ============================
the run folder is writable     every step                           always (a probe object)
method names, domain variants  domains, pilot, select, train        always
``score.checkpoint`` exists    score                                score not done (or forced)
budgets against the pool       pilot, select, train                 once ingest has run
k-means ``k`` against the pool domains, pilot, select, train        once ingest has run
every clip-schema column in    base, score, score_train, domains,   once ingest has run
every clip shard               pilot, train
domain column values           domains, pilot, select, train        once ingest has run
non-empty D_train / calibration / test  base (calibration also pilot, test also train)  once ingest has run
=============================  ===================================  ============================

The pool size comes from ``ingest/summary.json`` (from the score step's ``ok`` count once the
pool is scored). When ingest has not run yet (or is forced), the pool checks wait for it:
:meth:`Preflight.after_step` runs them right after ingest, before ``base`` starts.

Every failure raises a :class:`PreflightError` (a :class:`~mosaic_ray.errors.UsageError`: exit
2) whose message is one line naming the config key and the fix; bad clip shards raise
:class:`~mosaic_ray.stages.shards.ShardInputError` (also a usage error), a storage that cannot
be written :class:`~mosaic_ray.storage.StorageError` (exit 1).
"""

from __future__ import annotations

import logging
import posixpath
from typing import Iterable

from mosaic_ray import layout
from mosaic_ray.data.split import CALIBRATION, TEST, TRAIN
from mosaic_ray.config import ExperimentConfig
from mosaic_ray.errors import UsageError
from mosaic_ray.selection.budgets import BudgetError, resolve_budgets
from mosaic_ray.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["PreflightError", "Preflight", "preflight", "clip_columns"]

#: steps that decode clip shards (every column of the clip schema)
CLIP_READERS = frozenset({"base", "score", "score_train", "domains", "pilot", "train"})
#: steps that use the budgets
BUDGET_READERS = frozenset({"pilot", "select", "train"})
#: steps that use the domains (variants, methods, k-means k, the domain column)
DOMAIN_READERS = frozenset({"domains", "pilot", "select", "train"})
#: the object written and deleted to check that the run folder is writable
WRITE_PROBE = "_preflight_write_check"
ALL_STEPS = frozenset({"ingest", "base", "score", "score_train", "domains", "pilot", "select", "train", "report",
                       "synthesize", "embed", "cluster", "rounds", "autoscale_report"})
#: AutoScale's steps that read the splits, the clusters or the budgets
AUTOSCALE_READERS = frozenset({"synthesize", "embed", "cluster", "rounds"})


class PreflightError(UsageError, ValueError):
    """A check before work starts failed; the message names the key and the fix (exit 2)."""


def clip_columns() -> list[str]:
    """Every column a clip shard must have: the whole clip schema (each stage that reads clips
    decodes every field, :func:`mosaic_ray.data.clip.clips_from_table`)."""
    from mosaic_ray.data.clip import clip_schema

    return list(clip_schema().names)


class Preflight:
    """The checks of one invocation: :meth:`before_start` before Ray starts, :meth:`after_step`
    after each step (the pool checks right after ingest when they could not run before).

    Args:
        cfg: the validated config.
        storage: the run's storage.
        steps: the steps this invocation runs (None: every step).
        forced: the steps it redoes.
    """

    def __init__(self, cfg: ExperimentConfig, storage: Storage, steps: Iterable[str] | None = None,
                 forced: Iterable[str] = ()):
        self.cfg, self.storage = cfg, storage
        self.steps = frozenset(ALL_STEPS if steps is None else steps)
        self.forced = frozenset(forced)
        self._checked_summary: dict | None = None  # the ingest summary the pool checks ran on

    # ------------------------------------------------------------------ entry points
    def before_start(self) -> None:
        """Every check possible now; the pool checks too when ingest is done and not redone.

        Raises:
            PreflightError, ShardInputError: a check failed (exit 2).
            StorageError: the run folder cannot be read or written (exit 1).
        """
        self.check_writable()
        self.check_methods()
        self.check_checkpoint()
        ingest_pending = "ingest" in self.steps and ("ingest" in self.forced
                                                     or not self.storage.is_done(layout.INGEST))
        if ingest_pending:
            log.debug("[preflight] pool checks wait for the ingest step")
        elif self.storage.exists(layout.INGEST_SUMMARY):
            self.check_pool()

    def after_step(self, name: str) -> None:
        """Run after step ``name``: after ingest, the pool checks on its (new) summary."""
        if name != "ingest" or not self.storage.exists(layout.INGEST_SUMMARY):
            return
        if self.storage.read_json(layout.INGEST_SUMMARY) != self._checked_summary:
            self.check_pool()

    # ------------------------------------------------------------------ checks
    def check_writable(self) -> None:
        """Write and delete a probe object under the run folder (bucket, credentials, rights)."""
        self.storage.write_bytes(WRITE_PROBE, b"")
        self.storage.delete(WRITE_PROBE)

    def check_methods(self) -> None:
        """``selection.methods`` against the registry and ``domains.variants``."""
        if not self.steps & DOMAIN_READERS:
            return
        try:
            self.cfg.resolved_methods()
        except ValueError as e:
            raise PreflightError(f"selection.methods: {e}") from None

    def check_checkpoint(self) -> None:
        """``score.checkpoint`` exists (when the score step will run)."""
        uri = self.cfg.score.checkpoint
        if not uri or "score" not in self.steps:
            return
        if "score" not in self.forced and self.storage.is_done(layout.SCORE):
            return
        parent, name = posixpath.split(uri.rstrip("/"))
        if not name or not Storage(parent or ".", self.cfg.storage).exists(name):
            raise PreflightError(f"score.checkpoint: {uri} does not exist; point it at a planner/*.pt of "
                                 "another run (local path or s3:// URI) or remove it to score with this "
                                 "run's base model")

    def check_pool(self) -> None:
        """The checks that need the ingested pool: shard columns, split sizes, budgets, k, the
        domain column's values."""
        st = self.storage
        summary = st.read_json(layout.INGEST_SUMMARY)
        self._checked_summary = summary
        splits = summary.get("splits", {})
        if self.steps & CLIP_READERS:
            self.check_clip_shards()
        self.check_splits(splits)
        pool = self._pool_size(splits)
        if self.cfg.autoscale is not None and self.steps & AUTOSCALE_READERS:
            self.check_autoscale(splits)
        if self.cfg.selection is None:  # AutoScale only: no MOSAIC budget or domain
            return
        if self.steps & BUDGET_READERS:
            try:
                resolve_budgets(self.cfg.selection.budgets, pool)
            except BudgetError as e:
                raise PreflightError(f"selection.budgets: {e}{self._pool_note(pool)}; lower the budgets or "
                                     "give them as pool fractions in (0, 1], e.g. 0.25") from None
        if self.steps & DOMAIN_READERS:
            self.check_domains(pool)

    def check_autoscale(self, splits: dict) -> None:
        """AutoScale: the real, calibration and test splits are not empty, the GMM's K is at most
        the real scenes, and integer budgets fit the synthetic pool (its kept count once
        ``synthesize`` is done, else its largest possible size, ``per_clip`` × real clips)."""
        from mosaic_ray.stages import autoscale as asc

        a = self.cfg.autoscale
        names = {"real": asc.real_split(self.cfg), "calibration": asc.calibration_split(self.cfg),
                 "test": asc.test_split(self.cfg)}
        for role, split in names.items():
            if int(splits.get(split, 0)) == 0:
                raise PreflightError(f"autoscale: the {role} split ({split!r}) is empty (splits {splits}); "
                                     "use ingest.split_mode auto with more data")
        n_real = int(splits[names["real"]])
        if a.n_clusters > n_real:
            raise PreflightError(f"autoscale.n_clusters: {a.n_clusters} clusters but the real split has {n_real} "
                                 f"scenes; lower it to at most {n_real}")
        st = self.storage
        if "synthesize" not in self.forced and st.is_done("synthesize"):
            pool, what = int(st.done_payload("synthesize").get("kept", 0)), "the synthesize step kept"
        else:
            pool, what = a.synthesize.per_clip * n_real, f"at most synthesize.per_clip × {n_real} real clips"
        try:
            resolve_budgets(a.budgets, pool)
        except BudgetError as e:
            raise PreflightError(f"autoscale.budgets: {e} ({what}: {pool} synthetic scenes); lower the budgets "
                                 "or give them as pool fractions in (0, 1]") from None

    def check_clip_shards(self) -> None:
        """Every clip shard of every split has every column of the clip schema (footers only)."""
        from mosaic_ray.stages.shards import preflight_shards

        shards = [s for split in layout.SPLITS for s in self.storage.list(layout.clips(split), ".parquet")]
        preflight_shards(self.storage, shards, clip_columns())

    def check_splits(self, splits: dict) -> None:
        """D_train, calibration and test are not empty where the steps train or evaluate."""
        need = []
        if "base" in self.steps:
            need += [TRAIN, CALIBRATION, TEST]
        if "pilot" in self.steps:
            need.append(CALIBRATION)
        if "train" in self.steps:
            need.append(TEST)
        for split in dict.fromkeys(need):
            if int(splits.get(split, 0)) == 0:
                raise PreflightError(
                    f"ingest.split_mode: the {split} split is empty (ingest.split_mode "
                    f"{self.cfg.ingest.split_mode!r}, splits {splits}) but base / pilot / train need it; "
                    "use split_mode auto with more data, set ingest.calibration_segments / test_segments / "
                    "train_segments, "
                    "or run only ingest and score (with score.checkpoint)")

    def check_domains(self, pool: int) -> None:
        """k-means ``k`` of clustered variants against the pool; metadata columns have a value
        in every pool clip."""
        variants = self.cfg.domains.all_variants()
        for i, v in enumerate(variants):
            if v.kind in ("captions", "embedding") and v.k > pool:
                raise PreflightError(f"domains.variants[{i}].k: {v.k} clusters for variant {v.name!r} but the "
                                     f"pool has {pool} clips{self._pool_note(pool)}; lower k to at most {pool}")
        keys = {}  # column -> the config key that names it
        for i, v in enumerate(variants):
            if v.kind == "metadata":
                keys.setdefault(v.column, f"domains.variants[{i}].column" if self.cfg.domains.variants
                                else "domains.column")
        columns = sorted(keys)
        if not columns:
            return
        shards = self.storage.list(layout.clips("pool"), ".parquet")
        if not shards:
            return
        table = self.storage.read_table(layout.clips("pool"), columns=["clip_id", *columns])
        for col in columns:
            vals = table.column(col).to_pylist()
            bad = [i for i, x in enumerate(vals) if x is None or x == ""]
            if bad:
                raise PreflightError(f"{keys[col]}: {len(bad)} of {len(vals)} pool clips have no {col!r} value "
                                     f"(e.g. {table.column('clip_id')[bad[0]].as_py()}); choose another "
                                     f"column ({', '.join(('site', 'segment', 'scenario_id', 'dataset'))}) "
                                     "or re-ingest")

    # ------------------------------------------------------------------ helpers
    def _pool_size(self, splits: dict) -> int:
        """Pool clips: the scored ``ok`` clips once the score step is done (and not redone),
        else the ingested pool."""
        st = self.storage
        if "score" not in self.forced and "ingest" not in self.forced and st.is_done(layout.SCORE):
            ok = st.done_payload(layout.SCORE).get("ok")
            if isinstance(ok, int):
                return ok
        return int(splits.get("pool", 0))

    def _pool_note(self, pool: int) -> str:
        st = self.storage
        if "score" not in self.forced and st.is_done(layout.SCORE) \
                and isinstance(st.done_payload(layout.SCORE).get("ok"), int):
            return " (the clips the score step scored ok)"
        return f" (ingest put {pool} clips in the pool)"


def preflight(cfg: ExperimentConfig, storage: Storage, steps: Iterable[str] | None = None,
              forced: Iterable[str] = ()) -> Preflight:
    """Run :meth:`Preflight.before_start` for the given steps (None: all); returns the
    :class:`Preflight` whose :meth:`~Preflight.after_step` the pipeline calls after each step.

    Raises:
        PreflightError, ShardInputError: a check failed (exit 2).
        StorageError: the run folder cannot be read or written (exit 1).
    """
    checks = Preflight(cfg, storage, steps, forced)
    checks.before_start()
    return checks
