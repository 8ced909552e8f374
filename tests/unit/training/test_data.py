import json

from embedserve.training.data import (
    MIN_HELD_OUT,
    Pair,
    held_out_size,
    parse_jsonl,
    parse_pairs,
    parse_tsv,
    read_file,
    read_pairs,
    split_held_out,
    write_pairs,
)


def test_tsv_keeps_pairs_and_counts_ignored_lines():
    text = "Product A\tDescription of Product A\r\nno tab here\n\na\tb\tc\n\tempty query\nq2 \t p2\n"
    parsed = parse_tsv(text)
    assert parsed.pairs == [Pair("Product A", "Description of Product A"), Pair("q2", "p2")]
    # blank lines are not counted; one without a tab, one with three fields, one empty field are
    assert parsed.ignored == 3


def test_jsonl_with_and_without_negatives():
    lines = [
        json.dumps({"anchor": "a", "positive": "b", "negative": "c"}),
        json.dumps({"anchor": "d", "positive": "e", "negative": "f"}),
        "not json",
        json.dumps({"anchor": "x"}),
        json.dumps(["a", "b"]),
    ]
    parsed = parse_jsonl("\n".join(lines))
    assert parsed.pairs == [Pair("a", "b", "c"), Pair("d", "e", "f")]
    assert parsed.ignored == 3
    # mixed rows: negatives dropped so that the dataset's columns are not ragged
    mixed = parse_jsonl(lines[0] + "\n" + json.dumps({"anchor": "g", "positive": "h"}))
    assert mixed.pairs == [Pair("a", "b"), Pair("g", "h")]


def test_format_is_sniffed():
    assert parse_pairs('{"anchor": "a", "positive": "b"}').pairs == [Pair("a", "b")]
    assert parse_pairs("{curly query\tpassage").pairs == [Pair("{curly query", "passage")]


def test_write_and_read_back(tmp_path):
    pairs = [Pair("q", "p"), Pair("ünï", "cödé\ttab", "neg")]
    assert write_pairs(tmp_path / "t.jsonl", pairs) == 2
    assert read_pairs(tmp_path / "t.jsonl") == pairs
    (tmp_path / "x.tsv").write_text("q\tp\nbad\n")
    assert read_file(tmp_path / "x.tsv").ignored == 1


def test_held_out_split_is_seeded_disjoint_and_sized():
    pairs = [Pair(f"q{i}", f"p{i}") for i in range(300)]
    train, held = split_held_out(pairs, seed=3)
    assert len(held) == 30 and len(train) == 270
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(pairs)
    assert split_held_out(pairs, seed=3) == (train, held)
    assert split_held_out(pairs, seed=4)[1] != held
    assert held_out_size(2 * MIN_HELD_OUT - 1) == 0
    assert held_out_size(2 * MIN_HELD_OUT) == MIN_HELD_OUT
    assert split_held_out(pairs[:5]) == (pairs[:5], [])
