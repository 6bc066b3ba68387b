"""The retrieval core (``chextriev.retrieval``; ``metrics.retrieval`` re-exports it): exact k-NN
with exclusions, mAP/mHR/mRR on hand-computed cases, skip both ways, empty classes, ties, and a
randomised cross-check against a slow loop written straight from SPEC section 5."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chextriev.errors import UnknownNameError
from chextriev.retrieval import (
    apply_exclusions,
    exact_knn,
    neighbors_from_embeddings,
    retrieval_metrics,
    same_group_mask,
)


def reference(neighbors, labels, k, skip, empty_class="undefined"):
    """Slow loop: per class, per query, per position."""
    n, C = labels.shape
    per_class = {}
    for c in range(C):
        aps, hrs, rrs = [], [], []
        n_q = 0
        for q in range(n):
            if labels[q, c] != 1:
                continue
            n_q += 1
            rel = [labels[j, c] == 1 if j >= 0 else False for j in neighbors[q][:k]]
            hits = 0
            precs = []
            first = None
            for i, r in enumerate(rel, start=1):
                if r:
                    hits += 1
                    precs.append(hits / i)
                    if first is None:
                        first = i
            if skip and hits == 0:
                continue
            aps.append(sum(precs) / hits if hits else 0.0)
            hrs.append(hits / k)
            rrs.append(1 / first if first else 0.0)
        per_class[c] = (
            (np.mean(aps), np.mean(hrs), np.mean(rrs)) if aps else None,
            n_q,
        )
    defined = [c for c in range(C) if per_class[c][0] is not None]
    avg = []
    wavg = []
    for m in range(3):
        vals = [per_class[c][0][m] for c in defined]
        if empty_class == "zero":
            avg.append(sum(vals) / C)
        else:
            avg.append(np.mean(vals) if vals else None)
        w = [per_class[c][1] for c in defined]
        wavg.append(sum(v * x for v, x in zip(vals, w)) / sum(w) if sum(w) else None)
    return per_class, avg, wavg


LABELS = np.array(
    [
        [1, 0, 0],  # 0
        [1, 1, 0],  # 1
        [0, 1, 0],  # 2
        [1, 0, 0],  # 3
        [0, 0, 0],  # 4 normal
    ]
)
# k = 3; query excluded already
NEIGHBORS = np.array(
    [
        [4, 1, 3],  # q0 class0: rel 0,1,1
        [2, 0, 4],  # q1 class0: 0,1,0 ; class1: 1,0,0
        [4, 3, 0],  # q2 class1: 0,0,0 (no hit)
        [0, 1, 2],  # q3 class0: 1,1,0
        [0, 1, 2],  # q4 normal: never a query
    ]
)


def test_hand_computed_skip_false():
    m = retrieval_metrics(NEIGHBORS, LABELS, 3, skip=False)
    c0 = m["per_class"][0]
    # q0: AP=(1/2+2/3)/2=7/12, HR=2/3, RR=1/2 ; q1: AP=1/2, HR=1/3, RR=1/2 ; q3: AP=1, HR=2/3, RR=1
    assert c0["n_queries"] == 3 and c0["n_kept"] == 3
    assert c0["mAP"] == pytest.approx((7 / 12 + 1 / 2 + 1) / 3)
    assert c0["mHR"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3)
    assert c0["mRR"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    c1 = m["per_class"][1]
    # q1: AP=1, HR=1/3, RR=1 ; q2: zeros
    assert c1["mAP"] == pytest.approx(0.5)
    assert c1["mHR"] == pytest.approx(1 / 6)
    assert c1["mRR"] == pytest.approx(0.5)
    # class 2 has no query: undefined, out of averages
    assert m["per_class"][2]["mAP"] is None and m["per_class"][2]["n_queries"] == 0
    assert m["undefined_classes"] == [2]
    assert m["class_average"]["mAP"] == pytest.approx((c0["mAP"] + 0.5) / 2)
    assert m["weighted_average"]["mAP"] == pytest.approx((3 * c0["mAP"] + 2 * 0.5) / 5)
    assert m["options"]["skip"] is False


def test_hand_computed_skip_true_drops_no_hit_query():
    m = retrieval_metrics(NEIGHBORS, LABELS, 3, skip=True)
    c1 = m["per_class"][1]
    assert c1["n_queries"] == 2 and c1["n_kept"] == 1
    assert (c1["mAP"], c1["mHR"], c1["mRR"]) == pytest.approx((1.0, 1 / 3, 1.0))
    # class 0 unchanged: every query has a hit
    assert m["per_class"][0]["mAP"] == pytest.approx((7 / 12 + 1 / 2 + 1) / 3)


def test_skip_class_with_no_kept_query_is_undefined():
    labels = np.array([[1, 0], [0, 1], [0, 0]])
    neighbors = np.array([[1, 2], [0, 2], [0, 1]])
    m = retrieval_metrics(neighbors, labels, 2, skip=True)
    assert m["per_class"][0]["mAP"] is None and m["per_class"][0]["n_queries"] == 1
    assert m["class_average"]["mAP"] is None
    m0 = retrieval_metrics(neighbors, labels, 2, skip=False)
    assert m0["per_class"][0]["mAP"] == 0.0
    assert m0["class_average"]["mAP"] == 0.0


def test_empty_class_zero_is_published_behaviour():
    m = retrieval_metrics(NEIGHBORS, LABELS, 3, skip=False, empty_class="zero")
    c0, c1 = m["per_class"][0]["mAP"], m["per_class"][1]["mAP"]
    assert m["class_average"]["mAP"] == pytest.approx((c0 + c1 + 0) / 3)
    assert m["options"]["empty_class"] == "zero"
    with pytest.raises(UnknownNameError, match="undefined"):
        retrieval_metrics(NEIGHBORS, LABELS, 3, empty_class="nan")


def test_hit_rate_option():
    m = retrieval_metrics(NEIGHBORS, LABELS, 3, skip=False, hit_rate=True)
    assert m["per_class"][1]["hit"] == pytest.approx(0.5)
    assert m["per_class"][0]["hit"] == pytest.approx(1.0)
    assert "hit" not in retrieval_metrics(NEIGHBORS, LABELS, 3)["per_class"][0]


def test_duplicate_irrelevant_neighbours_and_padding():
    labels = np.array([[1], [0], [1]])
    # duplicates of an irrelevant item, then relevant; -1 = empty slot
    neighbors = np.array([[1, 1, 2], [0, 2, -1], [-1, 0, 1]])
    m = retrieval_metrics(neighbors, labels, 3, skip=False)
    # q0: rel 0,0,1 -> AP=1/3, HR=1/3, RR=1/3 ; q2: rel 0,1,0 -> AP=1/2, HR=1/3, RR=1/2
    assert m["per_class"][0]["mAP"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["per_class"][0]["mRR"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_class_names_and_k_smaller_than_columns():
    m = retrieval_metrics(NEIGHBORS, LABELS, 1, skip=False, class_names=["a", "b", "c"])
    assert set(m["per_class"]) == {"a", "b", "c"}
    # k=1: class a queries q0 (rel 0), q1 (0), q3 (1)
    assert m["per_class"]["a"]["mHR"] == pytest.approx(1 / 3)


def test_exclusion_mask_takes_next_results():
    neighbors = np.array([[1, 2, 3, 4]])
    mask = np.array([[True, False, True, False]])
    assert apply_exclusions(neighbors, mask, 2).tolist() == [[2, 4]]
    assert apply_exclusions(neighbors, mask, 3).tolist() == [[2, 4, -1]]
    groups = ["p1", "p2", "p1", "p3", "p2"]
    nb = np.array([[2, 1, 3], [4, 0, 3], [0, 1, 3], [0, 1, 2], [1, 0, 2]])
    assert same_group_mask(nb, groups).tolist() == [
        [True, False, False], [True, False, False], [True, False, False],
        [False, False, False], [True, False, False],
    ]


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("empty_class", ["undefined", "zero"])
def test_random_against_reference(skip, empty_class):
    rng = np.random.default_rng(0 if skip else 1)
    for trial in range(5):
        n, C, k = 40, 5, 6
        labels = (rng.random((n, C)) < rng.uniform(0.05, 0.5, C)).astype(np.float32)
        labels[:, -1] = 0 if trial % 2 else labels[:, -1]  # sometimes an empty class
        neighbors = np.stack([rng.choice(np.delete(np.arange(n), q), k, replace=False) for q in range(n)])
        m = retrieval_metrics(neighbors, labels, k, skip=skip, empty_class=empty_class)
        per_class, avg, wavg = reference(neighbors, labels, k, skip, empty_class)
        for c in range(C):
            ref, n_q = per_class[c]
            got = m["per_class"][c]
            assert got["n_queries"] == n_q
            if ref is None:
                assert got["mAP"] is None
            else:
                assert (got["mAP"], got["mHR"], got["mRR"]) == pytest.approx(ref)
        for i, name in enumerate(("mAP", "mHR", "mRR")):
            if avg[i] is None:
                assert m["class_average"][name] is None
            else:
                assert m["class_average"][name] == pytest.approx(avg[i])
                assert m["weighted_average"][name] == pytest.approx(wavg[i])


def test_neighbors_from_embeddings_matches_brute_force():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    nb, sc = neighbors_from_embeddings(emb, 5, block_size=7)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert (nb == ref).all()
    assert np.allclose(sc, np.take_along_axis(sims, ref, axis=1), atol=1e-5)
    assert (nb != np.arange(30)[:, None]).all()


def test_exact_knn_queries_against_a_gallery():
    """The core the Faiss oracle and self-retrieval share: brute force, exclusions, padding."""
    rng = np.random.default_rng(4)
    gallery = rng.normal(size=(25, 6)).astype(np.float32)
    queries = rng.normal(size=(9, 6)).astype(np.float32)
    idx, sc = exact_knn(queries, gallery, 4, block_size=4, normalize=False)
    sims = queries @ gallery.T
    ref = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    assert (idx == ref).all() and np.allclose(sc, np.take_along_axis(sims, ref, axis=1), atol=1e-5)
    unit_idx, _ = exact_knn(queries * 3.0, gallery * np.arange(1, 26)[:, None], 4)  # cosine: scale-free
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    assert (unit_idx == np.argsort(-(queries @ unit.T), axis=1, kind="stable")[:, :4]).all()
    keys_q, keys_g = np.arange(9), np.arange(25) % 9  # gallery j excluded for query j % 9
    idx, _ = exact_knn(queries, gallery, 25, exclude=[(keys_q, keys_g)])
    for q in range(9):
        kept = idx[q][idx[q] >= 0]
        assert set(kept) == {j for j in range(25) if j % 9 != q} and (idx[q][len(kept):] == -1).all()
    idx, sc = exact_knn(queries[:2], gallery[:3], 5)
    assert (idx[:, 3:] == -1).all() and np.isinf(sc[:, 3:]).all()
    with pytest.raises(ValueError, match="exclusion keys"):
        exact_knn(queries, gallery, 2, exclude=[(keys_q[:3], keys_g)])
    with pytest.raises(ValueError, match="k must be"):
        exact_knn(queries, gallery, 0)


def test_neighbors_exclude_by_id_patient_and_study():
    emb = np.array([[1, 0], [1, 0], [0.9, 0.1], [0, 1], [0.1, 1]], dtype=np.float32)
    # rows 0 and 1 are the same image id (a duplicate): excluded from each other
    nb, _ = neighbors_from_embeddings(emb, 2, exclude_self_ids=["a", "a", "b", "c", "d"])
    assert nb[0].tolist() == [2, 4] and nb[1].tolist() == [2, 4]
    nb, _ = neighbors_from_embeddings(
        emb, 4, patient_ids=["p", "q", "q", "r", "r"], exclude_same="patient"
    )
    assert nb[1].tolist() == [0, 4, 3, -1]
    assert nb[3].tolist() == [2, 0, 1, -1]
    nb, sc = neighbors_from_embeddings(emb, 4, study_ids=["s", "s", "t", "t", "u"], exclude_same="study")
    assert nb[0].tolist() == [2, 4, 3, -1] and math.isinf(sc[0, 3])
    with pytest.raises(ValueError, match="patient_ids"):
        neighbors_from_embeddings(emb, 2, exclude_same="patient")
    with pytest.raises(UnknownNameError, match="patient"):
        neighbors_from_embeddings(emb, 2, exclude_same="site")


def test_input_validation():
    with pytest.raises(ValueError, match="k"):
        retrieval_metrics(NEIGHBORS, LABELS, 4)
    with pytest.raises(ValueError, match="out of range"):
        retrieval_metrics(NEIGHBORS + 10, LABELS, 3)


def test_metrics_retrieval_is_the_core_under_its_evaluator_name():
    """``metrics.retrieval`` (the name the evaluators and the architecture contract use) holds the
    core's own functions, not copies."""
    import chextriev.retrieval as core
    import metrics.retrieval as evaluators

    for name in evaluators.__all__:
        assert getattr(evaluators, name) is getattr(core, name), name
