"""Request and response shapes of the knowledge-base API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from airies.core.schemas import ByteSize, StrictModel


class KnowledgeBaseCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    embedding_provider: Literal["hashing", "openai", "minilm"] | None = None
    embedding_model: str | None = Field(None, max_length=120)
    embedding_dimensions: int | None = Field(None, ge=8, le=4096)
    vector_store: Literal["embedded", "pgvector", "pinecone"] | None = None
    chunk_size: int | None = Field(None, ge=32, le=2000)
    chunk_overlap: int | None = Field(None, ge=0, le=1000)


class KnowledgeBaseUpdate(StrictModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    chunk_size: int | None = Field(None, ge=32, le=2000)
    chunk_overlap: int | None = Field(None, ge=0, le=1000)


class KnowledgeBaseOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from rows as they are
    id: str
    name: str
    description: str | None
    embedding_provider: str
    embedding_model: str
    embedding_dimensions: int
    lexical_only: bool
    vector_store: str
    chunk_size: int
    chunk_overlap: int
    status: str
    document_count: int
    chunk_count: int
    token_count: int
    embeddings_updated_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DocumentCreate(StrictModel):
    """Without content: a presigned S3 upload. With ``content_base64`` or ``text``: stored and ingested now."""

    filename: str = Field(min_length=1, max_length=300)
    content_type: str | None = Field(None, max_length=120)
    size_bytes: ByteSize | None = None
    content_base64: str | None = None
    text: str | None = None


class DocumentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from rows and results as they are

    id: str
    knowledge_base_id: str
    name: str
    source_type: str
    source_url: str | None
    content_type: str
    size_bytes: int | None
    status: str
    error_code: str | None
    error: str | None
    page_count: int
    chunk_count: int
    token_count: int
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None


class PresignedUploadOut(BaseModel):
    url: str
    fields: dict[str, str]
    expires_in: int
    max_bytes: int


class DocumentCreated(BaseModel):
    document: DocumentOut
    upload: PresignedUploadOut | None = None


class ChunkOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from rows and results as they are

    id: str
    document_id: str
    chunk_index: int
    text: str
    token_count: int
    page: int | None


class QueryIn(StrictModel):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(5, ge=1, le=50)
    threshold: float = Field(0.0, ge=-1.0, le=1.0)


class QueryResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from rows and results as they are

    chunk_id: str
    text: str
    score: float
    document_id: str
    document_name: str
    knowledge_base_id: str
    chunk_index: int
    page: int | None
    source_url: str | None


class ScrapeJobCreate(StrictModel):
    start_urls: list[str] = Field(min_length=1, max_length=20)
    max_depth: int | None = Field(None, ge=0, le=10)
    max_pages: int | None = Field(None, ge=1, le=1000)


class ScrapeJobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from rows and results as they are

    id: str
    knowledge_base_id: str
    start_urls: list[str]
    max_depth: int
    max_pages: int
    status: str
    pages_crawled: int
    pages_failed: int
    pages_skipped: int
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime


class ReembedIn(StrictModel):
    embedding_provider: Literal["hashing", "openai", "minilm"] | None = None
    embedding_model: str | None = Field(None, max_length=120)
    embedding_dimensions: int | None = Field(None, ge=8, le=4096)
