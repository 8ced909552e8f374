"""Token ids, every kind of output and a model's info survive the wire exactly, through real frames."""

from __future__ import annotations

import numpy as np
import orjson

from embedserve.backends.base import Fidelity, ModelInfo, Outputs, SparseVector
from embedserve.engine.ipc import EngineClient, EngineServer
from embedserve.engine.ipc_codec import (
    info_from_dict, info_to_dict, pack_outputs, pack_sequences, unpack_outputs, unpack_sequences,
)
from embedserve.models.tasks import Task


def outputs_of_every_kind(rng) -> Outputs:
    return Outputs(
        dense=rng.standard_normal((3, 8)).astype(np.float32),
        sparse=[
            SparseVector(np.array([1, 5, 900], np.int64), np.array([0.5, 1.25, 3.0], np.float32)),
            SparseVector(np.zeros(0, np.int64), np.zeros(0, np.float32)),  # an input with no term
            SparseVector(np.array([7], np.int64), np.array([2.0], np.float32)),
        ],
        multivector=[rng.standard_normal((n, 4)).astype(np.float32) for n in (5, 1, 3)],
        scores=rng.standard_normal((3, 2)).astype(np.float32),
    )


def assert_same(got: Outputs, sent: Outputs) -> None:
    np.testing.assert_array_equal(got.dense, sent.dense)
    np.testing.assert_array_equal(got.scores, sent.scores)
    assert len(got.sparse) == len(sent.sparse) and len(got.multivector) == len(sent.multivector)
    for a, b in zip(got.sparse, sent.sparse, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.indices.dtype == np.int64 and a.values.dtype == np.float32
    for a, b in zip(got.multivector, sent.multivector, strict=True):
        np.testing.assert_array_equal(a, b)


async def test_sequences_and_outputs_round_trip_through_the_wire(tmp_path):
    rng = np.random.default_rng(0)
    sent = outputs_of_every_kind(rng)
    sequences = [[101, 7, 8, 102], [101, 102], list(range(300))]

    async def encode(args, arrays):
        assert unpack_sequences(*arrays) == sequences
        return pack_outputs(sent)

    server = EngineServer({"encode": encode})
    await server.start(str(tmp_path / "engine.sock"))
    client = EngineClient(str(tmp_path / "engine.sock"))
    await client.connect()
    header, arrays = await client.call("encode", {}, pack_sequences(sequences))
    assert_same(unpack_outputs(header, arrays), sent)
    await client.close()
    await server.close()


def test_only_the_outputs_asked_for_travel():
    dense_only = Outputs(dense=np.ones((2, 3), np.float32))
    header, arrays = pack_outputs(dense_only)
    assert header == {"outputs": ["dense"]} and len(arrays) == 1
    got = unpack_outputs(header, arrays)
    assert got.sparse is None and got.multivector is None and got.scores is None
    empty = unpack_outputs(*pack_outputs(Outputs(sparse=[], multivector=[])))
    assert empty.sparse == [] and empty.multivector == []
    assert unpack_sequences(*pack_sequences([])) == []


def test_model_info_round_trips():
    info = ModelInfo(
        dimension=384, max_seq_length=256, pooling="mean", normalize=True, vocab_size=30522, device="cpu",
        backend="torch", prompts={"query": "q: "}, default_prompt_name="query", dtype="bf16",
        fidelity=Fidelity("torch bf16", "torch fp32", 0.9999, 0.9998, 64, {"sparse_mean_cosine": 0.99}),
        tasks=frozenset({Task.EMBED, Task.SPARSE}), labels=("no", "yes"), score_labels=2,
    )
    again = info_from_dict(orjson.loads(orjson.dumps(info_to_dict(info))))  # as the wire carries it
    assert again == info


def test_each_kind_of_output_is_one_array_or_a_few_never_one_per_input():
    header, arrays = pack_outputs(outputs_of_every_kind(np.random.default_rng(1)))
    assert header["outputs"] == ["dense", "scores", "sparse", "multivector"] and len(arrays) == 7
