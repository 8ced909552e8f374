"""plan_batches: length-sorted batches within the token budget and the size cap."""

from embedserve.engine.batcher import plan_batches


def seqs(*lengths):
    return [[7] * n for n in lengths]


def test_sorts_by_length_so_padding_stays_small():
    batches = plan_batches(seqs(9, 1, 8, 2), max_tokens=100, max_size=2)
    assert [[len(s) for s in b] for b in batches] == [[1, 2], [8, 9]]


def test_no_batch_over_size_cap():
    batches = plan_batches(seqs(*[3] * 10), max_tokens=10_000, max_size=4)
    assert len(batches) == 3 and max(len(b) for b in batches) == 4


def test_token_budget_counts_padded_rows():
    # 5 inputs of length 10 padded: 50 tokens; budget 30 allows 3 per batch
    batches = plan_batches(seqs(*[10] * 5), max_tokens=30, max_size=64)
    assert sorted(len(b) for b in batches) == [2, 3]
    for batch in batches:
        assert max(len(s) for s in batch) * len(batch) <= 30


def test_longer_input_closes_a_batch_when_padding_would_exceed_budget():
    batches = plan_batches(seqs(2, 2, 2, 20), max_tokens=30, max_size=64)
    assert [[len(s) for s in b] for b in batches] == [[2, 2, 2], [20]]


def test_input_longer_than_budget_still_runs_alone():
    batches = plan_batches(seqs(50, 1), max_tokens=10, max_size=64)
    assert [[len(s) for s in b] for b in batches] == [[1], [50]]


def test_every_item_planned_exactly_once():
    items = seqs(*[(i * 7) % 13 + 1 for i in range(100)])
    batches = plan_batches(items, max_tokens=40, max_size=8)
    planned = [id(s) for b in batches for s in b]
    assert sorted(planned) == sorted(id(s) for s in items)


def test_empty():
    assert plan_batches([], max_tokens=10, max_size=2) == []


def test_equal_lengths_share_one_batch():
    assert [len(b) for b in plan_batches(seqs(*[10] * 64), max_tokens=16384, max_size=64)] == [64]


def test_short_inputs_are_not_padded_up_to_long_ones():
    # padding eight 2-token inputs to 40 would cost far more than one extra batch
    batches = plan_batches(seqs(*[2] * 8, 40, 40), max_tokens=16384, max_size=64)
    assert [[len(s) for s in b] for b in batches] == [[2] * 8, [40, 40]]


def test_small_differences_are_padded_rather_than_split():
    batches = plan_batches(seqs(10, 11, 12, 13), max_tokens=16384, max_size=64)
    assert len(batches) == 1
