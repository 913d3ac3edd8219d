"""Pinecone through the official SDK: a serverless index, one namespace per knowledge base.

Every vector carries ``account_id``/``knowledge_base_id``/``document_id``/``chunk_index`` metadata and every
query filters on account and knowledge base as well as using the knowledge base's namespace, so even a
namespace mix-up cannot leak another account's chunks. Upserts are batched under Pinecone's limits
(1,000 vectors and 2 MB per request).

Account keys (``PUT /api/v1/provider-keys/pinecone``): ``validate_key`` (one ``list_indexes`` on the control plane,
``api.pinecone.io`` or the SDK's ``PINECONE_CONTROLLER_HOST``) and ``provider_status`` (the ``GET /api/v1/providers``
row), which the API edge adds to ``airies.accounts.provider_keys`` (``airies.api.provider_keys``). The SDK is
imported only where Pinecone is actually called.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from airies.core.config import Settings
from airies.core.errors import ProviderError, ValidationFailedError
from airies.knowledge.vector_stores.base import StoreStats, VectorMatch, VectorRecord

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
MAX_VECTORS_PER_UPSERT = 100  # Pinecone's recommended batch
MAX_REQUEST_BYTES = 2_000_000
MAX_IDS_PER_DELETE = 1000


def upsert_batch_size(dimensions: int) -> int:
    # A float32 widened to a Python float serialises to up to ~22 JSON bytes ("-0.0049821557477116585,"),
    # plus ~400 bytes of id and metadata per vector; stay under 2 MB with that worst case.
    return max(1, min(MAX_VECTORS_PER_UPSERT, MAX_REQUEST_BYTES // (dimensions * 22 + 400)))


def _status(exc: Exception) -> int | None:
    """The HTTP status of an SDK exception (its own hierarchy, data and control plane alike), if it has one."""
    return getattr(exc, "status", None) or getattr(exc, "status_code", None)


def _provider_error(what: str, exc: Exception, status: int | None, where: str = "the index host") -> ProviderError:
    """Says what failed, never what the upstream answered: an index host is tenant-supplied, and its answer (or the
    SDK's parse error quoting it) must not come back through our API. The full error goes to the log."""
    log.warning("Pinecone %s failed: %s: %s", what, type(exc).__name__, exc)
    if status is not None:
        outcome = f"{where} answered HTTP {status}"
    elif "timeout" in type(exc).__name__.lower():
        outcome = f"{where} timed out"
    elif "connection" in type(exc).__name__.lower():
        outcome = f"{where} could not be reached"
    else:
        outcome = f"the answer of {where} is not a Pinecone response"
    return ProviderError(
        f"Pinecone {what} failed: {outcome}",
        provider="pinecone",
        retryable=status is None or status == 429 or status >= 500,
        upstream_status=status,
    )


class PineconeVectorStore:
    name = "pinecone"

    def __init__(self, *, api_key: str, index_host: str, index: Any = None, timeout: float = 10.0) -> None:
        if index is None:
            from pinecone import Pinecone  # lazy: heavy import

            index = Pinecone(api_key=api_key, timeout=timeout).Index(host=index_host)
        self._index = index
        self.stats = StoreStats()

    @staticmethod
    def _namespace(knowledge_base_id: str) -> str:
        return knowledge_base_id

    def _call(self, what: str, fn: Any, *, missing_ok: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:  # the SDK raises its own hierarchy; surface one provider error
            status = _status(exc)
            if missing_ok and status == 404:  # deleting from a namespace that was never written: nothing to do
                return None
            raise _provider_error(what, exc, status) from exc

    def create_collection(self, account_id: str, knowledge_base_id: str, dimensions: int) -> None:
        # Namespaces are created implicitly by the first upsert; the index's dimension is fixed, so a knowledge base
        # whose embedder makes other vectors is refused now rather than at its first upsert.
        stats = self._call("describe_index_stats", self._index.describe_index_stats)
        index_dimension = int(getattr(stats, "dimension", 0) or 0)
        if index_dimension and index_dimension != dimensions:
            raise ValidationFailedError(
                f"the Pinecone index has dimension {index_dimension}; this knowledge base's embedder makes "
                f"{dimensions}-dimensional vectors",
                details=[
                    {
                        "field": "embedding_model",
                        "code": "dimension_mismatch",
                        "message": f"choose a model of dimension {index_dimension} or another index",
                    }
                ],
            )

    def delete_collection(self, account_id: str, knowledge_base_id: str) -> None:
        self._call(
            "delete", self._index.delete, missing_ok=True, delete_all=True, namespace=self._namespace(knowledge_base_id)
        )
        self.stats.delete_requests += 1

    def upsert(self, records: list[VectorRecord]) -> None:
        if not records:
            return
        import numpy as np

        namespace = self._namespace(records[0].knowledge_base_id)
        size = upsert_batch_size(int(records[0].values.shape[0]))
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            vectors = [
                {
                    "id": r.id,
                    "values": np.asarray(r.values, dtype=np.float32).tolist(),
                    "metadata": {
                        "account_id": r.account_id,
                        "knowledge_base_id": r.knowledge_base_id,
                        "document_id": r.document_id,
                        "chunk_index": r.chunk_index,
                    },
                }
                for r in batch
            ]
            self._call("upsert", self._index.upsert, vectors=vectors, namespace=namespace)
            self.stats.upsert_requests += 1
            self.stats.upserted += len(batch)

    def query(self, account_id: str, knowledge_base_id: str, vector: np.ndarray, top_k: int) -> list[VectorMatch]:
        import numpy as np

        self.stats.query_requests += 1
        response = self._call(
            "query",
            self._index.query,
            vector=np.asarray(vector, dtype=np.float32).tolist(),
            top_k=top_k,
            namespace=self._namespace(knowledge_base_id),
            filter={"account_id": {"$eq": account_id}, "knowledge_base_id": {"$eq": knowledge_base_id}},
            include_metadata=True,
        )
        matches = []
        for match in response.matches:
            metadata = match.metadata or {}
            # Defence in depth: never trust a filter we cannot see being applied.
            if metadata.get("account_id") != account_id or metadata.get("knowledge_base_id") != knowledge_base_id:
                continue
            matches.append(
                VectorMatch(
                    id=match.id,
                    score=float(match.score),
                    document_id=str(metadata.get("document_id", "")),
                    chunk_index=int(metadata.get("chunk_index", 0)),
                )
            )
        return matches

    def delete(self, account_id: str, knowledge_base_id: str, ids: list[str]) -> None:
        for start in range(0, len(ids), MAX_IDS_PER_DELETE):
            self._call(
                "delete",
                self._index.delete,
                missing_ok=True,
                ids=ids[start : start + MAX_IDS_PER_DELETE],
                namespace=self._namespace(knowledge_base_id),
            )
            self.stats.delete_requests += 1

    def count(self, account_id: str, knowledge_base_id: str) -> int:
        stats = self._call("describe_index_stats", self._index.describe_index_stats)
        namespaces = getattr(stats, "namespaces", None) or {}
        summary = namespaces.get(self._namespace(knowledge_base_id))
        return int(getattr(summary, "vector_count", 0) or 0) if summary is not None else 0


# ---------------------------------------------------------------------------------------------------------------
# account keys: validation and the GET /api/v1/providers row
# ---------------------------------------------------------------------------------------------------------------
KEY_CHECK_TIMEOUT_S = 10.0


def _check_key(api_key: str) -> bool:
    from pinecone import Pinecone, RetryConfig, UnauthorizedError

    client = Pinecone(api_key=api_key, timeout=KEY_CHECK_TIMEOUT_S, retry_config=RetryConfig(max_retries=1))
    try:
        client.list_indexes()  # cheap, authenticated, and allowed for any project's key
    except UnauthorizedError:
        return False
    except Exception as exc:
        # 403 (a key whose role has no control-plane access) is not a rejection of the key either: it says who
        # the caller is. Anything else means Pinecone could not be asked.
        status = _status(exc)
        if status == 403:
            return True
        raise _provider_error("key check", exc, status, "the control plane") from exc
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()
    return True


async def validate_key(api_key: str, settings: Settings) -> bool:
    """True when Pinecone accepts the key; False on 401; ``ProviderError`` when Pinecone could not be asked."""
    return await asyncio.to_thread(_check_key, api_key)


def provider_status(settings: Settings) -> list[dict[str, Any]]:
    configured = bool(settings.pinecone_api_key and settings.pinecone_index_host)
    return [
        {
            "provider": "pinecone",
            "kind": "vectors",
            "configured": configured,
            "status": "configured" if configured else "not_configured",
            "in_use": settings.kb_vector_store == "pinecone",
        }
    ]
