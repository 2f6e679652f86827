"""What LLM calls cost, in USD: each model's prices from genai-prices' offline table (for
`Settings.llm_provider`) or from `Settings.model_prices`, looked up once per model and kept, so a call's cost
is a few multiplications (a genai-prices lookup takes about 65-110 µs; see docs/decisions.md, "Cost per call").

Runs in the worker, where the costs are recorded; the LLM process never prices anything.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from genai_prices import Usage as PricedUsage
from genai_prices import calc_price

from agent_service.config import Settings
from agent_service.llm.messages import LLMRequest, Usage

logger = logging.getLogger("agent_service.prices")

# A prompt's tokens before the call, from its characters: about four per token in English text, the usual
# rule of thumb; it only sizes reservations, the books use the tokens the provider reports.
PER_MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """A model's prices in USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float

    def cost(self, usage: Usage) -> float:
        """The USD a call with this usage costs; cached prompt tokens at the cached price."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        paid = (
            (usage.prompt_tokens - cached) * self.input_per_mtok
            + cached * self.cached_input_per_mtok
            + usage.completion_tokens * self.output_per_mtok
        )
        return paid / PER_MILLION


class PriceBook:
    """Prices per model, read once per process (thread-safe). A model with no price is logged once and
    priced None, never 0: its calls are recorded with no cost and counted as unpriced."""

    def __init__(self, settings: Settings) -> None:
        self._provider = settings.llm_provider
        self._prices: dict[str, Price | None] = {
            model: Price(
                override.input_per_mtok,
                override.output_per_mtok,
                override.input_per_mtok if override.cached_input_per_mtok is None else override.cached_input_per_mtok,
            )
            for model, override in settings.model_prices.items()
        }
        self._lock = threading.Lock()

    def price(self, model: str) -> Price | None:
        """The model's prices, or None when neither MODEL_PRICES nor genai-prices knows it."""
        try:
            return self._prices[model]
        except KeyError:
            pass
        with self._lock:
            if model not in self._prices:
                self._prices[model] = _looked_up(model, self._provider)
            return self._prices[model]

    def cost(self, model: str, usage: Usage) -> float | None:
        """What a call to `model` with `usage` cost in USD; None when the model has no price."""
        price = self.price(model)
        return None if price is None else price.cost(usage)

    def estimate(self, request: LLMRequest) -> float | None:
        """The most a call can cost before it is made: its prompt (estimated from its characters) and all of
        its `max_tokens`. None when the model has no price."""
        prompt_tokens = request.estimated_prompt_tokens()
        usage = Usage(prompt_tokens, request.max_tokens, prompt_tokens + request.max_tokens)
        return self.cost(request.model, usage)


def _looked_up(model: str, provider: str) -> Price | None:
    try:
        prices = calc_price(PricedUsage(input_tokens=0, output_tokens=0), model, provider_id=provider).model_price
    except LookupError:
        logger.warning(
            "no price for model %r (provider %r): its calls are recorded without a cost; set MODEL_PRICES",
            model,
            provider,
        )
        return None
    input_price = _per_mtok(prices.input_mtok)
    cached = getattr(prices, "cache_read_mtok", None)
    return Price(input_price, _per_mtok(prices.output_mtok), input_price if cached is None else _per_mtok(cached))


def _per_mtok(value: Any) -> float:
    """A genai-prices price as a float. Tiered prices (a higher rate past, say, 200k prompt tokens) count at
    their base rate: no task here comes near a tier."""
    if value is None:
        return 0.0
    return float(value if isinstance(value, Decimal | int | float) else value.base)
