"""Money on the wire: one representation everywhere (REST, WebSocket frames, usage events, agent tests, webhooks).

Every amount is a JSON string holding a fixed-point decimal with a fixed number of decimals, never a JSON number
(floats lose cents) and never an exponent (``2.4E-7``):

* **credits**: 6 decimals, exactly the micro-credits the ledger counts: ``"1.500000"``;
* **USD**: 9 decimals (nano-dollars, the precision turn and conversation costs are kept at), rounded half-up:
  ``"0.000000240"``, ``"20.000000000"``.

Integer fields named ``*_cents`` and ``*_micros`` are exact integers of the smallest unit and stay JSON integers.
Format with :func:`format_usd` / :func:`micros_to_credits`; declare fields as :data:`UsdAmount` /
:data:`CreditAmount`.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

MICROS_PER_CREDIT = 1_000_000
CREDIT_SCALE = 6
USD_SCALE = 9
CREDIT_PATTERN = rf"^-?\d+\.\d{{{CREDIT_SCALE}}}$"
USD_PATTERN = rf"^-?\d+\.\d{{{USD_SCALE}}}$"
_USD_QUANTUM = Decimal(1).scaleb(-USD_SCALE)


def format_usd(value: Decimal | int | str) -> str:
    """A USD amount as a fixed-point string with 9 decimals, rounded half-up: ``Decimal('2.4E-7')`` ->
    ``'0.000000240'``. Floats are refused: they have already lost exactness."""
    if isinstance(value, (float, bool)):
        raise TypeError("money is never a float: pass a Decimal, an int or a decimal string")
    amount = Decimal(value).quantize(_USD_QUANTUM, rounding=ROUND_HALF_UP)
    return f"{amount + 0:f}"  # + 0 turns -0 into 0


def micros_to_credits(micros: int) -> str:
    """Exact decimal string of a micro-credit amount: 1500000 -> '1.500000' (integer arithmetic: hot in invoicing)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(int(micros)), MICROS_PER_CREDIT)
    return f"{sign}{whole}.{frac:0{CREDIT_SCALE}d}"


def _usd(value: Any) -> str:
    return format_usd(value) if isinstance(value, (Decimal, int, str)) else value


UsdAmount = Annotated[
    str,
    BeforeValidator(_usd),
    Field(pattern=USD_PATTERN, description="USD: a decimal string with 9 decimals", examples=["0.012345678"]),
]
CreditAmount = Annotated[
    str, Field(pattern=CREDIT_PATTERN, description="credits: a decimal string with 6 decimals", examples=["1.500000"])
]
