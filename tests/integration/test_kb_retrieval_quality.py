"""Retrieval quality on a small fixed corpus with the offline hashing embedder (lexical): for every question the
chunk that answers it must be in the top 3. A regression in chunking, embedding or scoring fails this."""

from __future__ import annotations

import pytest

from airies.knowledge.service import build_knowledge_service
from tests.kb_support import RecordingPublisher, kb_settings, moto_bucket, new_account

CORPUS = {
    "billing.md": """# Billing

Invoices are generated on the first day of every month and sent to the account owner's email address.

You can pay by credit card, SEPA direct debit or bank transfer. Bank transfers must include the invoice number as the reference.

If a payment fails we retry the card three times over seven days before the account is suspended.

Refunds for annual plans are prorated; monthly plans are not refunded for the current month.""",
    "shipping.md": """# Shipping and delivery

Orders placed before 2pm on a weekday leave our warehouse the same day.

Standard delivery within Germany takes two to three business days. Express delivery arrives the next business day for an extra 9 euros.

International shipping is available to all EU countries and takes five to eight business days.

Every parcel gets a tracking number by email as soon as it is handed to the carrier.""",
    "returns.md": """# Returns

Unused items can be returned within 30 days of delivery for a full refund.

To start a return, open your order in the customer portal and choose "Return items"; print the prepaid label.

Opened hygiene products such as toothbrush heads cannot be returned.

Refunds are issued to the original payment method within five business days after the return arrives.""",
    "account.md": """# Your account

To reset your password, click "Forgot password" on the login page and follow the link we email you; the link expires after one hour.

Two-factor authentication can be enabled under Settings, Security, using any authenticator app.

You can delete your account from Settings, Privacy; deletion is permanent after a 14-day grace period.""",
    "product.md": """# The Kettle Pro

The Kettle Pro boils one litre of water in 90 seconds and switches off automatically.

Descale the kettle every month with citric acid to keep the heating plate efficient.

The warranty covers manufacturing defects for two years from the date of purchase; keep your receipt.

Spare lids and filters are sold separately in the accessories shop.""",
    "support.md": """# Contact and support

Our phone support is open Monday to Friday from 8am to 6pm Central European Time.

Live chat is available around the clock for order questions.

Business customers with more than 50 seats get a dedicated account manager.""",
}

QUESTIONS = [
    ("When are invoices sent?", "billing.md", "first day of every month"),
    ("Which payment methods can I use to pay?", "billing.md", "SEPA direct debit"),
    ("What happens if my card payment fails?", "billing.md", "retry the card three times"),
    ("How long does standard delivery in Germany take?", "shipping.md", "two to three business days"),
    ("How much does express delivery cost?", "shipping.md", "extra 9 euros"),
    ("Do you ship internationally to EU countries?", "shipping.md", "all EU countries"),
    ("How do I get my parcel tracking number?", "shipping.md", "tracking number"),
    ("How many days do I have to return an item?", "returns.md", "within 30 days"),
    ("Can I return opened toothbrush heads?", "returns.md", "hygiene products"),
    ("How do I reset my password?", "account.md", "Forgot password"),
    ("How do I enable two-factor authentication?", "account.md", "authenticator app"),
    ("How can I delete my account?", "account.md", "grace period"),
    ("How fast does the kettle boil water?", "product.md", "90 seconds"),
    ("How often should I descale the kettle?", "product.md", "citric acid"),
    ("What does the warranty cover?", "product.md", "manufacturing defects"),
    ("What are your phone support hours?", "support.md", "Monday to Friday"),
    ("Is live chat available at night?", "support.md", "around the clock"),
    ("Do business customers get an account manager?", "support.md", "dedicated account manager"),
]


@pytest.fixture
def corpus_kb(database, tmp_path):
    with moto_bucket():
        service = build_knowledge_service(kb_settings(tmp_path), database, usage_publisher=RecordingPublisher())
        account = new_account(database)
        kb = service.create_knowledge_base(account, "Support corpus", chunk_size=48, chunk_overlap=8)
        for name, text in CORPUS.items():
            doc = service.add_document_content(
                account, kb.id, filename=name, content_type="text/markdown", data=text.encode()
            )
            assert doc.status == "ready"
        assert service.get_knowledge_base(account, kb.id).chunk_count >= 12  # several chunks per document
        yield service, account, kb


def test_right_chunk_in_top_3(corpus_kb):
    service, account, kb = corpus_kb
    misses = []
    for question, document, phrase in QUESTIONS:
        hits = service.query_knowledge_base(account, kb.id, question, top_k=3)
        if not any(h.document_name == document and phrase in h.text for h in hits):
            misses.append((question, [(h.document_name, h.text[:60], h.score) for h in hits]))
    assert misses == []


def test_retrieve_for_agent_ranks_and_thresholds(corpus_kb):
    service, account, kb = corpus_kb
    hits = service.retrieve_for_agent(account, [kb.id], "how long does express delivery take", top_k=3)
    assert len(hits) <= 3 and "Express delivery" in hits[0].text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert service.retrieve_for_agent(account, [kb.id], "zzqx vvkw") == []  # nothing similar enough
    assert service.retrieve_for_agent(account, [], "anything") == []


def test_async_retrieval_for_the_voice_loop(corpus_kb):
    import asyncio

    service, account, kb = corpus_kb
    hits = asyncio.run(service.aretrieve_for_agent(account, [kb.id], "how do I reset my password"))
    assert "Forgot password" in hits[0].text
