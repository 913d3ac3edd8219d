"""Pinecone edges the happy path does not reach, through the real SDK against the wire-level double."""

from __future__ import annotations

import numpy as np
import pytest

from airies.core.errors import ValidationFailedError
from airies.knowledge.vector_stores.base import VectorRecord
from airies.knowledge.vector_stores.pinecone import PineconeVectorStore
from tests.doubles.pinecone_server import PineconeDouble


def test_deleting_a_namespace_that_was_never_written_is_done_not_an_error():
    with PineconeDouble(dimension=8) as server:
        store = PineconeVectorStore(api_key=server.api_key, index_host=server.host)
        store.delete_collection("acc_a", "kb_empty")  # the double answers 404, as serverless indexes do
        store.delete("acc_a", "kb_empty", ["x", "y"])
        assert server.requests["/vectors/delete"] == 2
        record = VectorRecord("d-0", np.ones(8, dtype=np.float32) / np.sqrt(8), "acc_a", "kb_a", "d", 0)
        store.upsert([record])
        store.delete_collection("acc_a", "kb_a")
        assert store.count("acc_a", "kb_a") == 0


def test_a_knowledge_base_of_another_dimension_is_refused_when_created():
    with PineconeDouble(dimension=1536) as server:
        store = PineconeVectorStore(api_key=server.api_key, index_host=server.host)
        store.create_collection("acc_a", "kb_ok", 1536)
        with pytest.raises(ValidationFailedError, match="dimension 1536"):
            store.create_collection("acc_a", "kb_bad", 512)
