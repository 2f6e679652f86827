"""Prices per call: genai-prices' table for known models, MODEL_PRICES for others, no price never 0; and a
too-long description cut to the context the provider stated."""

from __future__ import annotations

import pytest

from agent_service.execution.truncation import fitted_description
from agent_service.llm.messages import LLMRequest, Message, ModelOptions, Usage
from agent_service.llm.prices import PriceBook
from tests.support import make_settings


def request(description: str, *, max_tokens: int = 100) -> LLMRequest:
    return LLMRequest(
        "gpt-4o-mini", 0.0, max_tokens, ModelOptions(), (Message("system", "Be brief."), Message("user", description))
    )


def test_a_known_model_is_priced_from_the_table_with_cached_tokens_at_the_cached_rate():
    prices = PriceBook(make_settings())
    cost = prices.cost(
        "gpt-4o-mini", Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200, cached_tokens=300)
    )
    assert cost == pytest.approx((700 * 0.15 + 300 * 0.075 + 200 * 0.60) / 1e6)


def test_model_prices_override_and_add_models():
    settings = make_settings(model_prices={"my-model": {"input_per_mtok": 1, "output_per_mtok": 2}})
    cost = PriceBook(settings).cost("my-model", Usage(100, 10, 110, cached_tokens=50))
    assert cost == pytest.approx((100 * 1 + 10 * 2) / 1e6)  # no cached price given: cached at the input price


def test_a_model_with_no_price_costs_none_not_zero():
    prices = PriceBook(make_settings())
    assert prices.cost("no-such-model-anywhere", Usage(10, 10, 20)) is None
    assert (
        prices.estimate(LLMRequest("no-such-model-anywhere", 0.0, 10, ModelOptions(), (Message("user", "hi"),))) is None
    )


def test_an_estimate_covers_the_prompt_and_all_of_max_tokens():
    prices, asked = PriceBook(make_settings()), request("y" * 400, max_tokens=100)
    prompt_tokens = asked.estimated_prompt_tokens()  # the same estimate the rate limits reserve
    assert prompt_tokens > (9 + 400) / 4
    assert prices.estimate(asked) == pytest.approx(prompt_tokens * 0.15e-6 + 100 * 0.60e-6)


def test_a_description_is_cut_to_the_context_the_provider_stated():
    description = "word " * 400
    error = (
        "maximum context length is 300 tokens. However, you requested 500 tokens "
        "(400 in the messages, 100 in the completion)"
    )
    cut = fitted_description(description, error, request=request(description))
    assert cut is not None and len(cut) < len(description) * 200 / 400


def test_a_description_that_cannot_be_cut_enough_or_an_error_without_figures_gives_none():
    description = "short"
    error = "maximum context length is 300 tokens. However, your messages resulted in 900 tokens."
    assert fitted_description(description, error, request=request(description)) is None
    assert fitted_description("word " * 100, "too long", request=request("word " * 100)) is None
