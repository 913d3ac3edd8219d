"""Knowledge-base routes: thin; every decision is in ``airies.knowledge.service``."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from airies.accounts.auth import Caller, authenticate, current_caller
from airies.core.errors import BadRequestError, PayloadTooLargeError, ValidationFailedError
from airies.core.schemas import BINARY, Limit, Offset, Page, request_body
from airies.knowledge.metrics import DocumentMetrics
from airies.knowledge.schemas import (
    ChunkOut,
    DocumentCreate,
    DocumentCreated,
    DocumentOut,
    KnowledgeBaseCreate,
    KnowledgeBaseOut,
    KnowledgeBaseUpdate,
    PresignedUploadOut,
    QueryIn,
    QueryResultOut,
    ReembedIn,
    ScrapeJobCreate,
    ScrapeJobOut,
)
from airies.knowledge.service import KnowledgeService, build_knowledge_service

router = APIRouter(prefix="/knowledge-bases", tags=["knowledge"])


def service(request: Request, caller: Caller = Depends(current_caller)) -> KnowledgeService:
    state = request.app.state
    base = getattr(state, "knowledge_service", None)
    if base is None:  # one per app: embedders and store clients are reused across requests
        base = state.knowledge_service = build_knowledge_service(state.settings, state.database)
    return base.bind(caller.session)


@router.post("", status_code=201)
def create_knowledge_base(
    body: KnowledgeBaseCreate, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> KnowledgeBaseOut:
    """Create a knowledge base."""
    fields = body.model_dump(exclude={"name"})
    return KnowledgeBaseOut.model_validate(svc.create_knowledge_base(caller.account_id, body.name, **fields))


@router.get("")
def list_knowledge_bases(
    caller: Caller = Depends(current_caller),
    svc: KnowledgeService = Depends(service),
    limit: Annotated[Limit, Query(le=100)] = 20,
    cursor: str | None = Query(None, max_length=40),
) -> Page[KnowledgeBaseOut]:
    """The account's knowledge bases."""
    rows, next_cursor = svc.list_knowledge_bases(caller.account_id, limit=limit, cursor=cursor)
    return Page(
        data=[KnowledgeBaseOut.model_validate(kb) for kb in rows],
        next_cursor=next_cursor,
        has_more=next_cursor is not None,
    )


@router.get("/{kb_id}")
def get_knowledge_base(
    kb_id: str, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> KnowledgeBaseOut:
    """One knowledge base with its document counts."""
    return KnowledgeBaseOut.model_validate(svc.get_knowledge_base(caller.account_id, kb_id))


@router.put("/{kb_id}")
def update_knowledge_base(
    kb_id: str,
    body: KnowledgeBaseUpdate,
    caller: Caller = Depends(current_caller),
    svc: KnowledgeService = Depends(service),
) -> KnowledgeBaseOut:
    """Change a knowledge base's name, description or settings."""
    return KnowledgeBaseOut.model_validate(
        svc.update_knowledge_base(caller.account_id, kb_id, body.model_dump(exclude_unset=True))
    )


@router.delete("/{kb_id}", status_code=204)
def delete_knowledge_base(
    kb_id: str, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> Response:
    """Delete a knowledge base with its documents and vectors."""
    svc.delete_knowledge_base(caller.account_id, kb_id)
    return Response(status_code=204)


async def _document_request(request: Request, *, require_filename: bool = True) -> tuple[DocumentCreate, bytes | None]:
    """JSON (``DocumentCreate``) or multipart/form-data with a ``file`` part (small files inline)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload: Any = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequestError("multipart uploads need a 'file' part")
        data = await upload.read()
        spec = DocumentCreate(
            filename=str(form.get("filename") or upload.filename or "document"),
            content_type=str(form.get("content_type") or upload.content_type or "") or None,
        )
        return spec, data
    try:
        raw = await request.body()
        if not require_filename:  # PUT keeps the document's name
            body = json.loads(raw or b"{}")
            if isinstance(body, dict):
                body.setdefault("filename", "unchanged")
            raw = json.dumps(body).encode()
        spec = DocumentCreate.model_validate_json(raw)
    except ValueError as exc:
        errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
        raise ValidationFailedError(
            "invalid document request",
            details=[
                {
                    "field": ".".join(map(str, e.get("loc", ()))),
                    "code": e.get("type", "invalid"),
                    "message": e.get("msg", ""),
                }
                for e in errors
            ],
        ) from exc
    if spec.content_base64 is not None and spec.text is not None:
        raise BadRequestError("send content_base64 or text, not both")
    if spec.content_base64 is not None:
        try:
            return spec, base64.b64decode(spec.content_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequestError("content_base64 is not valid base64") from exc
    if spec.text is not None:
        return spec, spec.text.encode()
    return spec, None


_DOCUMENT_BODY = request_body(
    {
        "application/json": DocumentCreate.model_json_schema(),
        "multipart/form-data": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": BINARY, "filename": {"type": "string"}, "content_type": {"type": "string"}},
        },
    },
    "JSON (text, content_base64, or neither for a presigned upload) or a multipart file",
)


@router.post("/{kb_id}/documents", status_code=201, openapi_extra=_DOCUMENT_BODY)
async def create_document(request: Request, kb_id: str) -> DocumentCreated:
    """Add a document: inline (JSON text or base64, or a multipart file) or as a presigned upload for large files."""
    spec, data = await _document_request(request)
    # The sync work below runs in a worker thread, like FastAPI's own sync routes.
    return await run_in_threadpool(_create_document_sync, request, kb_id, spec, data)


def _create_document_sync(request: Request, kb_id: str, spec: DocumentCreate, data: bytes | None) -> DocumentCreated:
    state = request.app.state
    with state.database.session() as session:
        caller = authenticate(request, session)
        account = caller.account
        svc = service(request, caller)
        settings = state.settings
        if data is None:
            doc, presigned = svc.upload_document(
                account.id, kb_id, filename=spec.filename, content_type=spec.content_type, size_bytes=spec.size_bytes
            )
            upload = PresignedUploadOut(
                url=presigned.url,
                fields=presigned.fields,
                expires_in=presigned.expires_in,
                max_bytes=settings.kb_max_document_bytes,
            )
            return DocumentCreated(document=DocumentOut.model_validate(doc), upload=upload)
        if len(data) > settings.kb_inline_upload_max_bytes:
            raise PayloadTooLargeError(
                f"inline uploads are limited to {settings.kb_inline_upload_max_bytes} bytes; "
                "create the document without content to get a presigned S3 upload"
            )
        doc = svc.add_document_content(
            account.id, kb_id, filename=spec.filename, content_type=spec.content_type, data=data
        )
        count_outcome(request, doc.status)
        return DocumentCreated(document=DocumentOut.model_validate(doc))


def count_outcome(request: Request, status: str) -> None:
    """An inline document processed in the API counts like one processed by the ingestion functions (the Lambda
    handler sets ``document_metrics``; its invocation flushes them)."""
    document_metrics: DocumentMetrics | None = getattr(request.app.state, "document_metrics", None)
    if document_metrics is not None:
        document_metrics.outcome(status)


@router.put("/{kb_id}/documents/{doc_id}", openapi_extra=_DOCUMENT_BODY)
async def update_document(request: Request, kb_id: str, doc_id: str) -> DocumentOut:
    """Replace a document's content (JSON ``text``/``content_base64`` or multipart ``file``); re-ingested now."""
    spec, data = await _document_request(request, require_filename=False)
    if data is None:
        raise BadRequestError("send the new content as text, content_base64 or a multipart file")

    def run() -> DocumentOut:
        state = request.app.state
        if len(data) > state.settings.kb_inline_upload_max_bytes:
            raise PayloadTooLargeError(
                f"inline uploads are limited to {state.settings.kb_inline_upload_max_bytes} bytes"
            )
        with state.database.session() as session:
            caller = authenticate(request, session)
            svc = service(request, caller)
            doc = svc.update_document(caller.account_id, kb_id, doc_id, data=data, content_type=spec.content_type)
            count_outcome(request, doc.status)
            return DocumentOut.model_validate(doc)

    return await run_in_threadpool(run)


@router.get("/{kb_id}/documents")
def list_documents(
    kb_id: str,
    caller: Caller = Depends(current_caller),
    svc: KnowledgeService = Depends(service),
    limit: Annotated[Limit, Query(le=200)] = 50,
    cursor: str | None = Query(None, max_length=40),
    status: str | None = Query(None, pattern="^(pending_upload|uploaded|processing|ready|failed)$"),
) -> Page[DocumentOut]:
    """The knowledge base's documents."""
    rows, next_cursor = svc.list_documents(caller.account_id, kb_id, limit=limit, cursor=cursor, status=status)
    return Page(
        data=[DocumentOut.model_validate(d) for d in rows], next_cursor=next_cursor, has_more=next_cursor is not None
    )


@router.get("/{kb_id}/documents/{doc_id}")
def get_document(
    kb_id: str, doc_id: str, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> DocumentOut:
    """One document with its processing status."""
    return DocumentOut.model_validate(svc.get_document(caller.account_id, kb_id, doc_id))


@router.delete("/{kb_id}/documents/{doc_id}", status_code=204)
def delete_document(
    kb_id: str, doc_id: str, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> Response:
    """Delete a document with its chunks and vectors."""
    svc.delete_document(caller.account_id, kb_id, doc_id)
    return Response(status_code=204)


@router.get("/{kb_id}/documents/{doc_id}/chunks")
def get_document_chunks(
    kb_id: str,
    doc_id: str,
    caller: Caller = Depends(current_caller),
    svc: KnowledgeService = Depends(service),
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, list[ChunkOut]]:
    """The document's chunks, a page at a time."""
    chunks = svc.get_document_chunks(caller.account_id, kb_id, doc_id, limit=limit, offset=offset)
    return {"data": [ChunkOut.model_validate(c) for c in chunks]}


@router.post("/{kb_id}/query")
def query_knowledge_base(
    kb_id: str, body: QueryIn, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> dict[str, list[QueryResultOut]]:
    """Search the knowledge base: the chunks closest to the query, with scores."""
    results = svc.query_knowledge_base(caller.account_id, kb_id, body.query, top_k=body.top_k, threshold=body.threshold)
    return {"data": [QueryResultOut.model_validate(r) for r in results]}


@router.post("/{kb_id}/scrape-jobs", status_code=202)
def create_scrape_job(
    kb_id: str,
    body: ScrapeJobCreate,
    caller: Caller = Depends(current_caller),
    svc: KnowledgeService = Depends(service),
) -> ScrapeJobOut:
    """Crawl web pages into documents (runs in the background)."""
    job = svc.create_web_scrape_job(
        caller.account_id, kb_id, body.start_urls, max_depth=body.max_depth, max_pages=body.max_pages
    )
    svc.start_scrape_job(job)
    return ScrapeJobOut.model_validate(svc.get_scrape_job(caller.account_id, kb_id, job.id))


@router.get("/{kb_id}/scrape-jobs")
def list_scrape_jobs(
    kb_id: str, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> dict[str, list[ScrapeJobOut]]:
    """The knowledge base's scrape jobs."""
    return {"data": [ScrapeJobOut.model_validate(j) for j in svc.list_scrape_jobs(caller.account_id, kb_id)]}


@router.get("/{kb_id}/scrape-jobs/{job_id}")
def get_scrape_job(
    kb_id: str, job_id: str, caller: Caller = Depends(current_caller), svc: KnowledgeService = Depends(service)
) -> ScrapeJobOut:
    """One scrape job with its progress."""
    return ScrapeJobOut.model_validate(svc.get_scrape_job(caller.account_id, kb_id, job_id))


@router.post("/{kb_id}/reembed")
def reembed(
    kb_id: str,
    body: ReembedIn | None = None,
    caller: Caller = Depends(current_caller),
    svc: KnowledgeService = Depends(service),
) -> KnowledgeBaseOut:
    """Re-embed every document with the knowledge base's (new) embedding model."""
    body = body or ReembedIn()
    kb = svc.update_embeddings(
        caller.account_id,
        kb_id,
        embedding_provider=body.embedding_provider,
        embedding_model=body.embedding_model,
        embedding_dimensions=body.embedding_dimensions,
    )
    return KnowledgeBaseOut.model_validate(kb)
