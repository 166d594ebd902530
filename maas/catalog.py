"""The model catalog: a card per model, for ``GET /v2/catalog`` and ``maas catalog``.

A card joins what deploy.yaml says of the model (description, tags, price), what the registry
knows (signature, versions, aliases, the production version's held-out metrics) and the
agreement a tenant must accept (its current version and terms, from the access store).
An LLM's card also gives its context length (the registered version's ``context_length``
metric) and its prices per 1,000 prompt and completion tokens; :func:`usage_cost` prices
``maas usage`` rows with the same numbers.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, Field

from maas.access import AccessStore, UsageRow
from maas.config import AgreementConfig, CatalogConfig, DeployConfig
from maas.oip import TensorSpec
from maas.registry import PRODUCTION, RegistryError, RegistryView
from maas.llm.files import KIND as LLM_KIND
from maas.routes import chat_route, embeddings_route, infer_route, model_route
from maas.text import KIND as TEXT_KIND


class CatalogEntry(CatalogConfig):
    """One model's ``catalog`` section with its name (the server app's args)."""

    name: str = Field(description="the model's name")


class CardAgreement(AgreementConfig):
    """The agreement a tenant must accept: its current version and terms."""

    version: int


class Price(BaseModel):
    per_1k_rows: float | None  # None: rows are not priced
    per_1k_input_tokens: float | None = None  # LLMs: prompt tokens
    per_1k_output_tokens: float | None = None  # LLMs: completion tokens
    currency: str


CONTEXT_LENGTH = "context_length"  # the registered-version metric an LLM's card shows


def price(prices: CatalogConfig) -> Price | None:
    """What ``prices`` charges; None when it sets no price at all."""
    if (prices.price_per_1k_rows is None and prices.price_per_1k_input_tokens is None
            and prices.price_per_1k_output_tokens is None):
        return None
    return Price(per_1k_rows=prices.price_per_1k_rows,
                 per_1k_input_tokens=prices.price_per_1k_input_tokens,
                 per_1k_output_tokens=prices.price_per_1k_output_tokens,
                 currency=prices.currency)


def usage_cost(row: UsageRow, prices: CatalogConfig) -> float | None:
    """What ``row`` costs: answered rows (status 200) x price_per_1k_rows / 1000 + prompt
    tokens x price_per_1k_input_tokens / 1000 + completion tokens x price_per_1k_output_tokens
    / 1000. Tokens are priced as the engine counted them, also for a client that went away
    mid-generation (4xx), but not after a server error (5xx). None: nothing to price."""
    if price(prices) is None or row.status >= 500:
        return None
    rows = row.rows if row.status == 200 else 0
    if rows == 0 and row.prompt_tokens == 0 and row.completion_tokens == 0:
        return None if row.status != 200 else 0.0
    return (rows * (prices.price_per_1k_rows or 0.0)
            + row.prompt_tokens * (prices.price_per_1k_input_tokens or 0.0)
            + row.completion_tokens * (prices.price_per_1k_output_tokens or 0.0)) / 1000.0


class ModelCard(BaseModel):
    name: str
    description: str
    tags: list[str]
    infer_url: str  # OIP infer; for a chat LLM, Triton's generate extension
    kind: str | None  # "onnx" or "text-embedding"; None: no production version yet
    embeddings_url: str | None  # the OpenAI-compatible route, for text-embedding models
    chat_url: str | None = None  # the OpenAI-compatible route, for chat LLMs
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    versions: list[int]
    aliases: dict[str, int]
    production_version: int | None
    variant: str | None
    metrics: dict[str, float]
    context_length: int | None = None  # LLMs: prompt + completion tokens at most
    agreement: CardAgreement | None  # None: no acceptance needed
    price: Price | None  # None: not priced


def entries(cfg: DeployConfig) -> list[CatalogEntry]:
    return [CatalogEntry(name=m.name, **m.catalog.model_dump()) for m in cfg.models]


def model_card(entry: CatalogEntry, registry: RegistryView, store: AccessStore | None) -> ModelCard:
    """``entry``'s card; a model not registered yet, or with no production version, has an
    empty signature."""
    try:
        aliases, versions = registry.aliases(entry.name), registry.version_numbers(entry.name)
    except RegistryError:
        aliases, versions = {}, []
    info = None
    if PRODUCTION in aliases:
        try:
            info = registry.get(entry.name, PRODUCTION)
        except RegistryError:
            info = None
    agreement = store.agreement(entry.name) if store is not None else None
    metrics = info.metrics if info else {}
    context = metrics.get(CONTEXT_LENGTH)
    chat = info is not None and info.kind == LLM_KIND
    return ModelCard(
        name=entry.name, description=entry.description or (info.description if info else ""),
        tags=entry.tags,
        infer_url=f"{model_route(entry.name)}/generate" if chat else infer_route(entry.name),
        kind=info.kind if info else None,
        embeddings_url=embeddings_route() if info and info.kind == TEXT_KIND else None,
        chat_url=chat_route() if chat else None,
        inputs=info.inputs if info else [], outputs=info.outputs if info else [],
        versions=versions, aliases=aliases,
        production_version=info.version if info else None,
        variant=info.variant if info else None, metrics=metrics,
        context_length=None if context is None else int(context),
        agreement=(None if agreement is None else CardAgreement(
            version=agreement.version, **agreement.terms.model_dump())),
        price=price(entry))


def catalog(all_entries: list[CatalogEntry], registry: RegistryView, store: AccessStore | None,
            visible: Callable[[str], bool] = lambda name: True) -> list[ModelCard]:
    """Cards of the models ``visible`` lets through, in deploy.yaml's order."""
    return [model_card(entry, registry, store) for entry in all_entries if visible(entry.name)]
