import numpy as np

from embedserve.training.data import Pair
from embedserve.training.evaluate import evaluate_model, ranks, retrieval_metrics


def test_metrics_match_hand_computed_ranks():
    # 3 queries, 3 passages; ranks by hand: q0 -> p0 first (rank 1), q1 -> p1 second, q2 -> p2 third
    passages = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = np.array([[1.0, 0.1], [0.9, 0.5], [0.1, 1.0]])
    assert ranks(queries, passages, [0, 1, 2]).tolist() == [1, 2, 3]
    metrics = retrieval_metrics(queries, passages, [0, 1, 2])
    assert np.isclose(metrics["mrr@10"], (1 + 1 / 2 + 1 / 3) / 3)
    assert np.isclose(metrics["recall@1"], 1 / 3)


def test_ranks_past_ten_score_zero_and_ties_rank_low():
    rng = np.random.default_rng(0)
    passages = rng.normal(size=(20, 8))
    queries = -passages  # own passage is the least similar: rank 20
    assert retrieval_metrics(queries, passages, list(range(20)))["mrr@10"] == 0.0
    same = np.ones((4, 3))
    assert ranks(same, same, [0, 1, 2, 3]).tolist() == [4, 4, 4, 4]


class FakeModel:
    """Embeds a text as a fixed vector, to check evaluate_model's bookkeeping against numpy."""

    def __init__(self, table):
        self.table = table

    def encode(self, texts, **kwargs):
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_evaluate_model_shares_duplicate_passages():
    table = {"q1": [1, 0], "q2": [0.8, 0.2], "q3": [0, 1], "p": [1, 0], "r": [0, 1]}
    pairs = [Pair("q1", "p"), Pair("q2", "p"), Pair("q3", "r")]
    metrics = evaluate_model(FakeModel(table), pairs)
    assert metrics == {"mrr@10": 1.0, "recall@1": 1.0}
