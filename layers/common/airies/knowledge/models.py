"""ORM models of the knowledge capability: knowledge bases, documents, chunks, scrape jobs, embedded vectors.

``kb_vectors``/``kb_vector_collections`` belong to the embedded vector store (exact search in the platform
database); the pgvector table ``kb_pgvectors`` is created by the migration only where the extension exists
and is not mapped here (see ``airies.knowledge.vector_stores.pgvector``).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from airies.core.models import Base, TimestampMixin, id_column, utcnow

DOCUMENT_STATUSES = ("uploaded", "processing", "ready", "failed")


class KnowledgeBase(TimestampMixin, Base):
    __tablename__ = "knowledge_bases"
    __table_args__ = (Index("ix_knowledge_bases_account_id_id", "account_id", "id"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    # Recorded per knowledge base: queries are embedded by the same model as its chunks.
    embedding_provider: Mapped[str] = mapped_column(String(40))
    embedding_model: Mapped[str] = mapped_column(String(120))
    embedding_dimensions: Mapped[int] = mapped_column(Integer)
    vector_store: Mapped[str] = mapped_column(String(20))  # embedded | pgvector | pinecone
    chunk_size: Mapped[int] = mapped_column(Integer)  # tokens
    chunk_overlap: Mapped[int] = mapped_column(Integer)  # tokens
    status: Mapped[str] = mapped_column(String(20), default="active")  # active | reembedding
    document_count: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    token_count: Mapped[int] = mapped_column(BigInteger, default=0)
    embeddings_updated_at: Mapped[datetime | None]

    @property
    def lexical_only(self) -> bool:
        """Similarity is word overlap, not meaning: the hashing embedder."""
        return self.embedding_provider == "hashing"


class KnowledgeDocument(TimestampMixin, Base):
    __tablename__ = "knowledge_documents"
    __table_args__ = (
        Index("ix_knowledge_documents_knowledge_base_id_id", "knowledge_base_id", "id"),
        Index("ix_knowledge_documents_account_id", "account_id"),
    )

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(300))
    source_type: Mapped[str] = mapped_column(String(20))  # upload | inline | url
    source_url: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(120))
    storage_key: Mapped[str | None] = mapped_column(String(1024))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    processed_etag: Mapped[str | None] = mapped_column(String(100))  # object version the chunks came from
    status: Mapped[str] = mapped_column(String(20), default="uploaded")  # uploaded | processing | ready | failed
    error_code: Mapped[str | None] = mapped_column(String(60))
    error: Mapped[str | None] = mapped_column(Text)
    page_count: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    scrape_job_id: Mapped[str | None] = mapped_column(String(40))
    processing_started_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]


class KnowledgeChunk(Base):
    __tablename__ = "knowledge_chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "chunk_index", name="uq_knowledge_chunks_document_id_chunk_index"),
        Index("ix_knowledge_chunks_knowledge_base_id", "knowledge_base_id"),
    )

    id: Mapped[str] = id_column()  # f"{document_id}-{chunk_index:05d}": a redelivery rewrites, never duplicates
    account_id: Mapped[str] = mapped_column(String(40))
    knowledge_base_id: Mapped[str] = mapped_column(String(40))
    document_id: Mapped[str] = mapped_column(ForeignKey("knowledge_documents.id", ondelete="CASCADE"))
    chunk_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KnowledgeScrapeJob(TimestampMixin, Base):
    __tablename__ = "knowledge_scrape_jobs"
    __table_args__ = (Index("ix_knowledge_scrape_jobs_knowledge_base_id", "knowledge_base_id"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    start_urls: Mapped[list[Any]]
    max_depth: Mapped[int] = mapped_column(Integer)
    max_pages: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued | running | completed | failed
    pages_crawled: Mapped[int] = mapped_column(Integer, default=0)
    pages_failed: Mapped[int] = mapped_column(Integer, default=0)
    pages_skipped: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class KnowledgeVector(Base):
    """A chunk's embedding for the embedded store (float32 little-endian bytes)."""

    __tablename__ = "kb_vectors"
    __table_args__ = (Index("ix_kb_vectors_knowledge_base_id_account_id", "knowledge_base_id", "account_id"),)

    id: Mapped[str] = id_column()
    account_id: Mapped[str] = mapped_column(String(40))
    knowledge_base_id: Mapped[str] = mapped_column(String(40))
    document_id: Mapped[str] = mapped_column(String(40))
    chunk_index: Mapped[int] = mapped_column(Integer)
    dimensions: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class KnowledgeVectorCollection(Base):
    """One per knowledge base in the embedded store; ``revision`` changes on every write (cache validation)."""

    __tablename__ = "kb_vector_collections"

    knowledge_base_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40))
    dimensions: Mapped[int] = mapped_column(Integer)
    revision: Mapped[str] = mapped_column(String(40))
