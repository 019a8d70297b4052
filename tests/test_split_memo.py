"""The per-process split memo gives the same training rows and the same evaluation as
featurising every call afresh, keys on the split's files, and steps aside for large splits."""

import numpy as np
import pytest
import torch

from mosaic_ray import layout
from mosaic_ray.data.clip import clips_to_table
from mosaic_ray.evaluate.planner_eval import score_planner
from mosaic_ray.planner.model import PlannerSpec, VocabularyPlanner, build_vocabulary, save_checkpoint
from mosaic_ray.planner.futures import expert_futures
from mosaic_ray.stages import split_memo
from mosaic_ray.stages.base import evaluate_checkpoint
from mosaic_ray.stages.trainer import featurize_batch, training_rows
from mosaic_ray.storage import Storage

SPEC = PlannerSpec(vocab_size=16, embed_dim=16, hidden_dim=16, max_agents=8, max_lanes=12)


@pytest.fixture
def run(ngsim_clips, tmp_path):
    us = ngsim_clips("US101/USA_US101-22_1_T-1.xml")
    lk = ngsim_clips("Lankershim/USA_Lanker-2_13_T-1.xml")
    splits = {"train": us[:12], "pool": us[12:40] + lk[:20], "test": lk[20:45]}
    st = Storage(str(tmp_path / "run"))
    for name, clips in splits.items():
        st.write_table(f"{layout.clips(name)}/shard-00000.parquet", clips_to_table(clips))
    anchors = build_vocabulary(expert_futures(splits["train"] + splits["pool"]), SPEC.vocab_size)
    torch.manual_seed(0)
    st.makedirs("planner")
    save_checkpoint(VocabularyPlanner(SPEC, torch.from_numpy(anchors)), st.path("planner/m.pt"))
    split_memo.clear()
    yield st, splits
    split_memo.clear()


def _direct_rows(st, pool_ids, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(split_memo, "MAX_TRAIN_ROWS", 0)  # every split "too large": featurised per call
        return training_rows(st, SPEC, pool_ids=pool_ids)


def test_memoised_training_rows_equal_the_per_call_featurising(run, monkeypatch):
    st, splits = run
    picks = [c.clip_id for c in splits["pool"][::3]]
    direct = _direct_rows(st, picks, monkeypatch)
    assert split_memo.stats()["entries"] <= 2  # only row counts were memoised
    memo = training_rows(st, SPEC, pool_ids=picks)
    again = training_rows(st, SPEC, pool_ids=picks[:4])
    assert split_memo.stats()["hits"] >= 2  # the second call featurised nothing
    assert set(memo) == set(direct)
    for k in direct:
        np.testing.assert_array_equal(memo[k], direct[k], err_msg=k)
    assert len(again["clip_id"]) == 12 + 4
    with pytest.raises(ValueError, match="1 of 2 selected clips"):
        training_rows(st, SPEC, pool_ids=[picks[0], "no-such-clip"])


def test_memoised_evaluation_equals_a_fresh_one_and_a_rewritten_split_is_read_again(run, monkeypatch):
    st, splits = run
    fresh = evaluate_checkpoint(st, "planner/m.pt", clips=splits["test"])  # explicit clips: no memo
    memo1 = evaluate_checkpoint(st, "planner/m.pt")
    memo2 = evaluate_checkpoint(st, "planner/m.pt")
    assert memo1 == memo2 == fresh
    assert memo1["n_clips"] == 25
    # the test split rewritten with other clips (other file sizes): a new memo entry
    st.write_table(f"{layout.clips('test')}/shard-00000.parquet", clips_to_table(splits["test"][:7]))
    assert evaluate_checkpoint(st, "planner/m.pt")["n_clips"] == 7
    with monkeypatch.context() as m:
        m.setattr(split_memo, "MAX_EVAL_ROWS", 3)
        assert split_memo.eval_inputs(st, "test", SPEC.features) is None


def test_memo_keeps_at_most_max_entries(run, monkeypatch):
    st, _ = run
    monkeypatch.setattr(split_memo, "MAX_ENTRIES", 2)  # three splits: one entry must be evicted
    for split in ("train", "pool", "test"):
        split_memo.training_features(st, SPEC, split, featurize_batch)
    assert split_memo.stats()["entries"] == 2


def test_score_planner_with_memoised_features_matches(run):
    st, splits = run
    from mosaic_ray.planner.model import load_checkpoint

    model = load_checkpoint(st.path("planner/m.pt"))
    clips, feats, cache = split_memo.eval_inputs(st, "test", model.spec.features)
    a = score_planner(model, clips, model.spec.features, cache=cache, feats=feats)
    b = score_planner(model, splits["test"], model.spec.features)
    np.testing.assert_array_equal(a.epdms, b.epdms)
    np.testing.assert_array_equal(a.terms, b.terms)
