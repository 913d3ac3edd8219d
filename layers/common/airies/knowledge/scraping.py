"""Web scraping: a crawl job (start URLs, depth, page limit) queued or run inline; each fetched page becomes a
document of the knowledge base, a page that fails is recorded as a failed document, never fatal to the job.
"""

from __future__ import annotations

import json
import logging
import time

from sqlalchemy import select, update

from airies.core.errors import BadRequestError, NotFoundError
from airies.core.ids import new_id
from airies.core.models import utcnow
from airies.knowledge import bases, documents
from airies.knowledge.context import KnowledgeContext
from airies.knowledge.crawler import Crawler, validate_start_url
from airies.knowledge.models import KnowledgeBase, KnowledgeDocument, KnowledgeScrapeJob

log = logging.getLogger(__name__)


def create_web_scrape_job(
    ctx: KnowledgeContext,
    account_id: str,
    kb_id: str,
    start_urls: list[str],
    *,
    max_depth: int | None = None,
    max_pages: int | None = None,
) -> KnowledgeScrapeJob:
    if not start_urls:
        raise BadRequestError("start_urls must not be empty")
    for index, url in enumerate(start_urls):
        validate_start_url(url, ctx.settings, field=f"start_urls.{index}")
    depth = ctx.settings.kb_scrape_max_depth if max_depth is None else max_depth
    pages = ctx.settings.kb_scrape_max_pages if max_pages is None else max_pages
    if not 0 <= depth <= 10 or not 1 <= pages <= 1000:
        raise BadRequestError("max_depth must be 0-10 and max_pages 1-1000")
    with ctx.unit_of_work() as session:
        bases.get_knowledge_base(ctx, account_id, kb_id, session)
        job = KnowledgeScrapeJob(
            id=new_id("kscr"),
            account_id=account_id,
            knowledge_base_id=kb_id,
            start_urls=list(start_urls),
            max_depth=depth,
            max_pages=pages,
            status="queued",
            pages_crawled=0,
            pages_failed=0,
            pages_skipped=0,
        )
        session.add(job)
        session.flush()
    return job


def enqueue_scrape_job(ctx: KnowledgeContext, job: KnowledgeScrapeJob) -> bool:
    """Send the job to the scrape queue; False when no queue is configured (the caller runs it inline)."""
    if not ctx.settings.kb_scrape_queue_url:
        return False
    if ctx.sqs is None:
        import boto3  # only where a scrape queue is configured

        ctx.sqs = boto3.client("sqs", region_name=ctx.settings.aws_region, endpoint_url=ctx.settings.aws_endpoint_url)
    ctx.sqs.send_message(
        QueueUrl=ctx.settings.kb_scrape_queue_url,
        MessageBody=json.dumps({"type": "scrape_job", "job_id": job.id, "account_id": job.account_id}),
    )
    return True


def start_scrape_job(ctx: KnowledgeContext, job: KnowledgeScrapeJob) -> None:
    """Queue the job, or (no queue: a plain local run) crawl it now, inside this request."""
    if not enqueue_scrape_job(ctx, job):
        run_scrape_job(ctx.pipeline(), job.id)


def list_scrape_jobs(ctx: KnowledgeContext, account_id: str, kb_id: str) -> list[KnowledgeScrapeJob]:
    with ctx.unit_of_work() as session:
        bases.get_knowledge_base(ctx, account_id, kb_id, session)
        return list(
            session.scalars(
                select(KnowledgeScrapeJob)
                .where(KnowledgeScrapeJob.account_id == account_id, KnowledgeScrapeJob.knowledge_base_id == kb_id)
                .order_by(KnowledgeScrapeJob.id.desc())
                .limit(100)
            )
        )


def get_scrape_job(ctx: KnowledgeContext, account_id: str, kb_id: str, job_id: str) -> KnowledgeScrapeJob:
    with ctx.unit_of_work() as session:
        job = session.scalar(
            select(KnowledgeScrapeJob)
            .where(
                KnowledgeScrapeJob.id == job_id,
                KnowledgeScrapeJob.account_id == account_id,
                KnowledgeScrapeJob.knowledge_base_id == kb_id,
            )
            .execution_options(populate_existing=True)
        )
        if job is None:
            raise NotFoundError("scrape job", job_id)
        return job


def run_scrape_job(ctx: KnowledgeContext, job_id: str) -> KnowledgeScrapeJob | None:
    """Crawl and ingest: each fetched page becomes a document; a page that fails is counted, not fatal."""
    with ctx.database.session() as session:
        job = session.get(KnowledgeScrapeJob, job_id)
        if job is None or job.status in ("completed", "failed"):
            return job  # redelivered message of a finished job: nothing to do
        job.status = "running"
        job.started_at = utcnow()
        account_id, kb_id = job.account_id, job.knowledge_base_id
        start_urls, depth, limit = list(job.start_urls), job.max_depth, job.max_pages
        done_urls = set(
            session.scalars(select(KnowledgeDocument.source_url).where(KnowledgeDocument.scrape_job_id == job_id))
        )
    crawler = Crawler(ctx.settings, fetcher=ctx.fetcher)
    crawled = failed = 0
    started = time.monotonic()
    try:
        for page in crawler.crawl(start_urls, max_depth=depth, max_pages=limit):
            if page.url in done_urls:  # a retried job does not ingest the same page twice
                continue
            if page.error:
                failed += 1
                _record_failed_page(ctx, account_id, kb_id, job_id, page.url, page.error_code, page.error)
                continue
            try:
                documents.add_document_content(
                    ctx,
                    account_id,
                    kb_id,
                    filename=(page.title or page.url)[:200],
                    content_type="text/html",
                    data=page.body,
                    source_type="url",
                    source_url=page.url,
                    scrape_job_id=job_id,
                )
                crawled += 1
            except NotFoundError:
                raise
            except Exception as exc:  # one bad page never sinks the job
                failed += 1
                log.warning("scrape page %s failed: %s", page.url, exc)
            with ctx.database.session() as session:
                session.execute(
                    update(KnowledgeScrapeJob)
                    .where(KnowledgeScrapeJob.id == job_id)
                    .values(pages_crawled=crawled, pages_failed=failed, pages_skipped=crawler.skipped)
                )
    except NotFoundError:  # the knowledge base was deleted mid-crawl
        return None
    except Exception as exc:
        with ctx.database.session() as session:
            job = session.get(KnowledgeScrapeJob, job_id)
            if job is not None:
                job.status, job.error, job.finished_at = "failed", str(exc)[:2000], utcnow()
        raise
    with ctx.database.session() as session:
        job = session.get(KnowledgeScrapeJob, job_id)
        if job is None:
            return None
        job.pages_crawled, job.pages_failed, job.pages_skipped = crawled, failed, crawler.skipped
        if crawled == 0 and failed:
            job.status, job.error = "failed", crawler.first_error or "no page could be fetched"
        else:
            job.status = "completed"
        job.finished_at = utcnow()
    log.info("scrape job %s: %d pages, %d failed in %.1fs", job_id, crawled, failed, time.monotonic() - started)
    return job


def _record_failed_page(
    ctx: KnowledgeContext, account_id: str, kb_id: str, job_id: str, url: str, code: str | None, reason: str
) -> None:
    with ctx.database.session() as session:
        kb = session.get(KnowledgeBase, kb_id)
        if kb is None:
            raise NotFoundError("knowledge base", kb_id)
        doc = documents.new_document(
            kb,
            name=url[:300],
            content_type="text/html",
            source_type="url",
            size_bytes=None,
            source_url=url,
            scrape_job_id=job_id,
            status="failed",
        )
        doc.storage_key = None
        doc.error_code = (code or "fetch_failed")[:60]
        doc.error = reason[:2000]
        session.add(doc)
