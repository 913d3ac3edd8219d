"""Payment processors behind ``base.PaymentProvider``; ``build_payment_provider`` picks Stripe when configured."""

from __future__ import annotations

from airies.billing.vendors.base import PaymentProvider
from airies.billing.vendors.stripe import StripePaymentProvider
from airies.core.config import Settings
from airies.core.secrets import get_platform_secret


def build_payment_provider(settings: Settings) -> PaymentProvider | None:
    """Stripe when a secret key or a webhook secret is configured (settings, env, or the platform secret); else None."""
    api_key = settings.stripe_secret_key or get_platform_secret("stripe_secret_key", settings)
    webhook_secret = settings.stripe_webhook_secret or get_platform_secret("stripe_webhook_secret", settings)
    if not api_key and not webhook_secret:
        return None
    return StripePaymentProvider(
        api_key,
        webhook_secret=webhook_secret,
        api_base=settings.stripe_api_base,
        webhook_tolerance_s=settings.stripe_webhook_tolerance_s,
        max_network_retries=settings.stripe_max_network_retries,
    )
