"""How many rows a request brings to a batch, and which variants' requests may stack: the worker
and the gateway's admission count them alike."""

from __future__ import annotations

from protocol.types import TensorSpec, request_rows, stackable

IMAGE = TensorSpec(name="image", datatype="FP32", shape=(-1, 64))
VECTOR = TensorSpec(name="v", datatype="FP32", shape=(4,))  # no batch dimension
MASK = TensorSpec(name="mask", datatype="BOOL", shape=(-1, 64))


def test_a_batched_request_brings_its_batch_dimension_in_rows() -> None:
    assert request_rows((IMAGE,), [(8, 64)]) == 8
    assert request_rows((IMAGE, MASK), [(3, 64), (3, 64)]) == 3
    assert stackable((IMAGE, MASK))


def test_an_input_without_a_batch_dimension_is_one_row_and_never_stacks() -> None:
    assert request_rows((VECTOR,), [(4,)]) == 1  # not 4: its first dimension is not a batch
    assert not stackable((VECTOR,))
    # The batch dimension of the first batched input counts, wherever it sits; a request mixing
    # both kinds does not stack either (its unbatched input would be stacked too).
    assert request_rows((VECTOR, IMAGE), [(4,), (2, 64)]) == 2
    assert not stackable((VECTOR, IMAGE))
    assert request_rows((), []) == 1 and not stackable(())
