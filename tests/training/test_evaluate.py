"""The measuring instruments: they must separate right from wrong before they judge the model."""

from __future__ import annotations

import numpy as np

from generative_service.training import data as D
from generative_service.training import evaluate as E


def test_judge_reads_real_digits_it_never_saw(judge):
    # Trained on the held-out share only; scored on the generator's digits.
    assert judge.real_accuracy >= 0.97
    images, labels = E.real_digits(5)
    assert E.accuracy(judge, images, labels) >= 0.95


def test_judge_is_not_fooled_by_blank_or_wrong_labels(judge):
    images, labels = E.real_digits(3)
    assert E.accuracy(judge, images, (labels + 1) % 10) < 0.1
    blank = np.ones((10, 64, 64), np.float32)
    assert E.accuracy(judge, blank, np.arange(10)) <= 0.1


def test_frechet_distance_separates_distributions(judge):
    real, _ = E.real_digits(20)
    same = E.frechet_distance(judge.features(real), judge.features(real))
    assert abs(same) < 1e-6
    half_a, half_b = real[::2], real[1::2]
    near = E.frechet_distance(judge.features(half_a), judge.features(half_b))
    only_ones = real[np.repeat(np.arange(10) == 1, 20)]
    far = E.frechet_distance(judge.features(only_ones), judge.features(real))
    assert near < far


def test_edge_f1_scores_agreement():
    real, _ = E.real_digits(1)
    edges = D.canny_edges(real)
    assert E.edge_f1(real, edges) == 1.0
    assert E.edge_f1(np.ones_like(real), edges) == 0.0
    assert E.edge_f1(np.roll(real, 5, axis=2), edges) < 0.6


def test_bold_style_thickens_strokes():
    real, _ = E.real_digits(3)
    assert D.ink_fraction(D.bold(real)).mean() > D.ink_fraction(real).mean() + 0.05


def test_eval_sets_are_fixed_and_heldout_phrasings_unseen():
    assert E.eval_set(2) == E.eval_set(2)
    items = E.eval_set(4)
    assert sorted({i.label for i in items}) == list(range(10))
    assert len({i.seed for i in items}) == len(items)
    heldout = {i.prompt for i in E.eval_set(6, heldout=True)}
    assert heldout.isdisjoint(D.training_corpus())
