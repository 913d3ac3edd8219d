"""Knowledge bases: documents in, chunks and vectors out, retrieval fast enough for a voice turn.

``KnowledgeService`` is the one object routes, handlers and other capabilities hold: the context (``context.py``:
database, settings, storage, embedders, vector stores, usage) plus every operation, each written once in its module:

- ``bases.py``: knowledge bases (create, read, update, delete, counts, size against the tier)
- ``documents.py``: documents (upload, inline content, replace, list, read, delete)
- ``ingestion.py``: a document's pipeline (extract -> chunk -> embed -> store; failures and retries)
- ``retrieval.py``: queries, and retrieval for a voice turn
- ``reembedding.py``: a knowledge base embedded again with a new model
- ``scraping.py``: crawl jobs; each page becomes a document

Tenancy: every read is filtered by account; a foreign id is a 404; every vector query is scoped by account
and knowledge base inside the store.
"""

from __future__ import annotations

from typing import Any

from airies.core.config import Settings, get_settings
from airies.core.database import Database, get_database
from airies.knowledge import bases, documents, ingestion, reembedding, retrieval, scraping
from airies.knowledge.context import IngestionCounters, KnowledgeContext
from airies.knowledge.ingestion import PreparedDocument, failure_reason
from airies.knowledge.retrieval import RetrievedChunk

__all__ = [
    "IngestionCounters",
    "KnowledgeService",
    "PreparedDocument",
    "RetrievedChunk",
    "build_knowledge_service",
    "failure_reason",
]


class KnowledgeService(KnowledgeContext):
    # knowledge bases
    create_knowledge_base = bases.create_knowledge_base
    list_knowledge_bases = bases.list_knowledge_bases
    get_knowledge_base = bases.get_knowledge_base
    update_knowledge_base = bases.update_knowledge_base
    delete_knowledge_base = bases.delete_knowledge_base
    # documents
    upload_document = documents.upload_document
    add_document_content = documents.add_document_content
    update_document = documents.update_document
    list_documents = documents.list_documents
    get_document = documents.get_document
    get_document_chunks = documents.get_document_chunks
    delete_document = documents.delete_document
    # ingestion (the S3 event, the inline pipeline, and the state machine's stages)
    handle_object_created = ingestion.handle_object_created
    process_document = ingestion.process_document
    prepare_document = ingestion.prepare_document
    embed_chunk_range = ingestion.embed_chunk_range
    finalise_document = ingestion.finalise_document
    fail_document = ingestion.fail_document
    generate_embeddings = ingestion.generate_embeddings
    store_embeddings = ingestion.store_embeddings
    # retrieval
    query_knowledge_base = retrieval.query_knowledge_base
    search_similar_content = retrieval.search_similar_content
    retrieve_for_agent = retrieval.retrieve_for_agent
    aretrieve_for_agent = retrieval.aretrieve_for_agent
    # re-embedding
    update_embeddings = reembedding.update_embeddings
    # web scraping
    create_web_scrape_job = scraping.create_web_scrape_job
    enqueue_scrape_job = scraping.enqueue_scrape_job
    start_scrape_job = scraping.start_scrape_job
    list_scrape_jobs = scraping.list_scrape_jobs
    get_scrape_job = scraping.get_scrape_job
    run_scrape_job = scraping.run_scrape_job


def build_knowledge_service(
    settings: Settings | None = None, database: Database | None = None, **kwargs: Any
) -> KnowledgeService:
    """The service wired from settings (the conversations capability and every handler use this)."""
    settings = settings or get_settings()
    return KnowledgeService(database or get_database(settings), settings, **kwargs)
