"""The fine-tune start form's time estimates (finetunes.estimates), for its template."""

from __future__ import annotations

from typing import Any

from django import template

from finetunes.estimates import preset_estimates
from finetunes.forms import FineTuneForm
from finetunes.models import FineTuneMethod

register = template.Library()


@register.simple_tag
def fine_tune_estimates(presets: list[dict[str, Any]], form: FineTuneForm) -> dict[str, Any]:
    """Each preset row with its time on the gpu-queue workers, for each size of student the
    form offers, for the method chosen (LoRA until one is)."""
    method = form["method"].value() or FineTuneMethod.LORA
    if method not in FineTuneMethod.values:
        method = FineTuneMethod.LORA
    return preset_estimates(
        presets=presets, students=form.students.values(), gpu=form.has_gpu, method=str(method)
    )
