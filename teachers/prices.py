"""Prices: the shipped table with the team's overrides, and a run's frozen price."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from teachers.models import PriceEntry, TeacherRun
from teams.models import Team
from worker import pricing
from worker.pricing import FREE, ModelPrice

CENT_MICROS = Decimal("0.000001")  # costs are stored with 6 decimals (a millionth of a dollar)

LOCAL_PROVIDER = "local_hf"


def usd(value: Decimal | int | float | str) -> Decimal:
    return Decimal(value).quantize(CENT_MICROS, rounding=ROUND_HALF_UP)


# Prices ----------------------------------------------------------------------------------------


def price_table_for_team(*, team: Team) -> dict[str, ModelPrice]:
    """worker.pricing's shipped table with the team's overrides on top (same lookup rules)."""
    table = dict(pricing.DEFAULT_PRICES)
    for entry in PriceEntry.objects.filter(team=team):
        table[entry.model.strip().split("/")[-1].lower()] = _entry_price(entry)
    return table


def _entry_price(entry: PriceEntry) -> ModelPrice:
    return ModelPrice(
        input_per_1m=Decimal(entry.input_usd_per_mtok),
        output_per_1m=Decimal(entry.output_usd_per_mtok),
        batch_discount=Decimal(1) - Decimal(entry.batch_multiplier),
        provider="team",
    )


def price_for_model(*, team: Team, model: str, provider: str) -> ModelPrice | None:
    if provider == LOCAL_PROVIDER:
        return FREE
    return pricing.price_for(model, price_table_for_team(team=team))


def price_to_json(price: ModelPrice) -> dict[str, str]:
    return {
        "input_per_1m": str(price.input_per_1m),
        "output_per_1m": str(price.output_per_1m),
        "batch_discount": str(price.batch_discount),
        "source": price.provider,
    }


def price_from_json(data: dict[str, Any]) -> ModelPrice:
    return ModelPrice(
        input_per_1m=Decimal(data["input_per_1m"]),
        output_per_1m=Decimal(data["output_per_1m"]),
        batch_discount=Decimal(data.get("batch_discount", "0")),
        provider=str(data.get("source", "")),
    )


def price_entry_save(
    *,
    team: Team,
    user: User,
    model: str,
    input_usd_per_mtok: Decimal,
    output_usd_per_mtok: Decimal,
    batch_multiplier: Decimal = Decimal("0.5"),
) -> PriceEntry:
    """Create or replace the team's price for a model (owners)."""
    model = model.strip()
    if not model:
        raise ValidationError({"model": "name the model, e.g. gpt-4o-mini"})
    for name, value in (
        ("input_usd_per_mtok", input_usd_per_mtok),
        ("output_usd_per_mtok", output_usd_per_mtok),
    ):
        if value < 0:
            raise ValidationError({name: "a price cannot be negative"})
    if not Decimal(0) <= batch_multiplier <= Decimal(1):
        raise ValidationError(
            {"batch_multiplier": "the batch multiplier is a fraction between 0 and 1 (0.5 = half)"}
        )
    entry, _ = PriceEntry.objects.update_or_create(
        team=team,
        model=model,
        defaults={
            "input_usd_per_mtok": input_usd_per_mtok,
            "output_usd_per_mtok": output_usd_per_mtok,
            "batch_multiplier": batch_multiplier,
            "updated_by": user,
        },
    )
    return entry


def price_entry_delete(*, entry: PriceEntry) -> None:
    entry.delete()


def run_price(run: TeacherRun) -> ModelPrice:
    data = (run.estimate or {}).get("price")
    if data:
        return price_from_json(data)
    price = price_for_model(team=run.project.team, model=run.model, provider=run.provider)
    if price is None:
        raise ValueError(f"no price for model {run.model!r}; add it to the team's price table")
    return price
