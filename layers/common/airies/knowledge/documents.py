"""Documents of a knowledge base: upload (a presigned POST, or the bytes inline), replace, list, read, delete.

An upload is checked (type, size, the knowledge base's size against the tier) before anything is stored; inline
content is ingested inside the request (``ingestion.process_document``), a presigned upload when its object lands.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from airies.core.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from airies.core.ids import new_id
from airies.knowledge import bases, ingestion
from airies.knowledge import extraction as dp
from airies.knowledge.bases import check_kb_size, refresh_counts
from airies.knowledge.context import KnowledgeContext
from airies.knowledge.models import KnowledgeBase, KnowledgeChunk, KnowledgeDocument


def safe_filename(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "document"
    return cleaned[:120]


def new_document(
    kb: KnowledgeBase,
    *,
    name: str,
    content_type: str,
    source_type: str,
    size_bytes: int | None,
    source_url: str | None = None,
    scrape_job_id: str | None = None,
    status: str = "uploaded",
) -> KnowledgeDocument:
    doc_id = new_id("kdoc")
    name = dp.strip_control_characters(name).strip()[:300] or "document"  # a NUL would not even store
    return KnowledgeDocument(
        id=doc_id,
        account_id=kb.account_id,
        knowledge_base_id=kb.id,
        name=name,
        source_type=source_type,
        source_url=source_url,
        content_type=content_type,
        storage_key=f"knowledge/{kb.id}/{doc_id}/{safe_filename(name)}",
        size_bytes=size_bytes,
        status=status,
        page_count=0,
        chunk_count=0,
        token_count=0,
        attempts=0,
        scrape_job_id=scrape_job_id,
    )


def _check_upload(ctx: KnowledgeContext, filename: str, content_type: str | None, size: int | None) -> str:
    if not filename or not filename.strip():
        raise BadRequestError("filename is required")
    normalised = dp.normalise_content_type(content_type, filename)
    try:
        dp.check_content_type(normalised)
    except dp.DocumentRejected as exc:
        raise UnsupportedMediaTypeError(exc.reason) from exc
    if size is not None and size > ctx.settings.kb_max_document_bytes:
        raise PayloadTooLargeError(f"the document is {size} bytes; the limit is {ctx.settings.kb_max_document_bytes}")
    return normalised


def _refuse_while_reembedding(kb: KnowledgeBase) -> None:
    if kb.status == "reembedding":
        raise ConflictError(
            "the knowledge base is being re-embedded; add or replace documents when it is done",
            code="reembedding",
        )


def _stored_key(doc: KnowledgeDocument) -> str:
    """The object key of a document with stored content: every document but a web page that failed."""
    if doc.storage_key is None:
        raise BadRequestError("this document has no stored content (a failed web page)")
    return doc.storage_key


def upload_document(
    ctx: KnowledgeContext,
    account_id: str,
    kb_id: str,
    *,
    filename: str,
    content_type: str | None,
    size_bytes: int | None = None,
) -> tuple[KnowledgeDocument, Any]:
    """A document row plus a presigned S3 POST; the object's ObjectCreated event starts ingestion."""
    normalised = _check_upload(ctx, filename, content_type, size_bytes)
    with ctx.unit_of_work() as session:
        kb = bases.get_knowledge_base(ctx, account_id, kb_id, session)
        check_kb_size(ctx, session, account_id, kb_id, size_bytes)
        doc = new_document(
            kb,
            name=filename,
            content_type=normalised,
            source_type="upload",
            size_bytes=size_bytes,
            status="pending_upload",
        )
        session.add(doc)
        session.flush()
    presigned = ctx.storage.presigned_post(
        account_id,
        _stored_key(doc),
        max_bytes=ctx.settings.kb_max_document_bytes,
        content_type=normalised,
        expires_in=ctx.settings.kb_presign_expires_s,
    )
    return doc, presigned


def add_document_content(
    ctx: KnowledgeContext,
    account_id: str,
    kb_id: str,
    *,
    filename: str,
    content_type: str | None,
    data: bytes,
    process: bool = True,
    source_type: str = "inline",
    source_url: str | None = None,
    scrape_job_id: str | None = None,
) -> KnowledgeDocument:
    """Store a small document's bytes and (by default) ingest it now, inside this request."""
    normalised = _check_upload(ctx, filename, content_type, len(data))
    with ctx.unit_of_work() as session:
        kb = bases.get_knowledge_base(ctx, account_id, kb_id, session)
        if process:
            _refuse_while_reembedding(kb)
        check_kb_size(ctx, session, account_id, kb_id, len(data))
        doc = new_document(
            kb,
            name=filename,
            content_type=normalised,
            source_type=source_type,
            size_bytes=len(data),
            source_url=source_url,
            scrape_job_id=scrape_job_id,
        )
        doc.content_sha256 = hashlib.sha256(data).hexdigest()
        session.add(doc)
        session.flush()
    ctx.storage.upload_bytes(account_id, _stored_key(doc), data, content_type=normalised)
    if process:
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()  # what S3 reports for a single PUT
        ingestion.process_document(ctx.pipeline(), doc.id, etag=etag, data=data)
    return get_document(ctx, account_id, kb_id, doc.id)


def update_document(
    ctx: KnowledgeContext, account_id: str, kb_id: str, doc_id: str, *, data: bytes, content_type: str | None = None
) -> KnowledgeDocument:
    """Replace a document's content: same id and key, new chunks and vectors (the old ones it no longer has
    are deleted); the document keeps serving its previous version until the new one is ready. The new content
    keeps the document's type unless ``content_type`` changes it: content that cannot be of that type (text for
    a PDF) is refused with 415 before anything changes."""
    with ctx.unit_of_work() as session:
        doc = get_document(ctx, account_id, kb_id, doc_id, session)
        if doc.storage_key is None:
            raise BadRequestError("this document has no stored content to replace (a failed web page)")
        normalised = _check_upload(ctx, doc.name, content_type or doc.content_type, len(data))
        try:
            dp.check_signature(data, normalised)
        except dp.DocumentRejected as exc:
            raise UnsupportedMediaTypeError(
                f"the document is {normalised} but {exc.reason.replace('the file', 'the new content', 1)}: "
                "send the new content in that format "
                "(content_base64 or a multipart file), or set content_type to change the document's type",
                code="content_type_mismatch",
            ) from exc
        _refuse_while_reembedding(bases.get_knowledge_base(ctx, account_id, kb_id, session))
        check_kb_size(ctx, session, account_id, kb_id, len(data), replacing=doc_id)
        doc.content_type = normalised
        doc.size_bytes = len(data)
        storage_key = doc.storage_key
        session.flush()
    ctx.storage.upload_bytes(account_id, storage_key, data, content_type=normalised)
    etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
    ingestion.process_document(ctx.pipeline(), doc_id, etag=etag, data=data)
    return get_document(ctx, account_id, kb_id, doc_id)


def list_documents(
    ctx: KnowledgeContext,
    account_id: str,
    kb_id: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
    status: str | None = None,
) -> tuple[list[KnowledgeDocument], str | None]:
    with ctx.unit_of_work() as session:
        bases.get_knowledge_base(ctx, account_id, kb_id, session)
        query = select(KnowledgeDocument).where(
            KnowledgeDocument.account_id == account_id, KnowledgeDocument.knowledge_base_id == kb_id
        )
        if status:
            query = query.where(KnowledgeDocument.status == status)
        if cursor:
            query = query.where(KnowledgeDocument.id < cursor)
        rows = list(session.scalars(query.order_by(KnowledgeDocument.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)


def get_document(
    ctx: KnowledgeContext, account_id: str, kb_id: str, doc_id: str, session: Session | None = None
) -> KnowledgeDocument:
    if session is None:
        with ctx.unit_of_work() as own:
            return get_document(ctx, account_id, kb_id, doc_id, own)
    doc = session.scalar(
        select(KnowledgeDocument)
        .where(
            KnowledgeDocument.id == doc_id,
            KnowledgeDocument.account_id == account_id,
            KnowledgeDocument.knowledge_base_id == kb_id,
        )
        .execution_options(populate_existing=True)
    )
    if doc is None:
        raise NotFoundError("document", doc_id)
    return doc


def get_document_chunks(
    ctx: KnowledgeContext, account_id: str, kb_id: str, doc_id: str, *, limit: int = 100, offset: int = 0
) -> list[KnowledgeChunk]:
    with ctx.unit_of_work() as session:
        get_document(ctx, account_id, kb_id, doc_id, session)
        return list(
            session.scalars(
                select(KnowledgeChunk)
                .where(KnowledgeChunk.document_id == doc_id, KnowledgeChunk.account_id == account_id)
                .order_by(KnowledgeChunk.chunk_index)
                .offset(offset)
                .limit(limit)
            )
        )


def delete_document(ctx: KnowledgeContext, account_id: str, kb_id: str, doc_id: str) -> None:
    with ctx.unit_of_work() as session:
        kb = bases.get_knowledge_base(ctx, account_id, kb_id, session)
        doc = get_document(ctx, account_id, kb_id, doc_id, session)
        ids = list(session.scalars(select(KnowledgeChunk.id).where(KnowledgeChunk.document_id == doc_id)))
        storage_key, store_name = doc.storage_key, kb.vector_store
        session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.document_id == doc_id))
        session.delete(doc)
        session.flush()
        refresh_counts(session, kb)
    ctx.store(store_name, account_id).delete(account_id, kb_id, ids)
    if storage_key:
        ctx.storage.delete(account_id, storage_key)
