from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class ImmutableError(Exception):
    """A frozen dataset version (or one of its rows) was about to be changed."""


class DatasetVersion(models.Model):
    """A frozen, named, hashed dataset. Never changes once written (save() refuses updates)."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="dataset_versions"
    )
    name = models.CharField(max_length=120)
    content_hash = models.CharField(max_length=64)
    params = models.JSONField(default=dict)  # worker.datasets.FreezeParams + selection options
    stats = models.JSONField(default=dict)
    leakage = models.JSONField(default=dict)
    skipped = models.JSONField(default=list)
    row_count = models.PositiveIntegerField(default=0)
    decision_count = models.PositiveIntegerField(default=0)
    files = models.JSONField(default=dict)  # "format:split" -> path relative to DATA_DIR
    job = models.ForeignKey(
        "jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_datasetversion"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="dataset_name_unique")
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableError(f"dataset version {self.name!r} is frozen and cannot change")
        super().save(*args, **kwargs)


class DatasetItem(models.Model):
    """One row of a frozen version, copied (inputs and output), so later edits never touch it."""

    version = models.ForeignKey(
        "dataset_versions.DatasetVersion", on_delete=models.CASCADE, related_name="items"
    )
    row_id = models.CharField(max_length=40)
    split = models.CharField(max_length=12)
    source = models.CharField(max_length=20)
    group = models.PositiveIntegerField(default=0)
    inputs: models.JSONField[dict[str, Any]] = models.JSONField()
    output = models.TextField()
    decision_ids = models.JSONField(default=list)
    # The teacher's reason and its distribution over the labels, as frozen (training signals;
    # the distribution is None for edited rows, human references and teachers without one).
    rationale = models.TextField(blank=True)
    label_distribution = models.JSONField(null=True, blank=True)
    # Where it came from; plain ids (not foreign keys) so nothing can ever rewrite a frozen row.
    teacher_output_id = models.BigIntegerField(null=True, blank=True)
    input_row_id = models.BigIntegerField(null=True, blank=True)
    # The input was written by a teacher (projects.InputRow.synthetic): train split only.
    synthetic_input = models.BooleanField(default=False)

    class Meta:
        db_table = "projects_datasetitem"
        ordering = ["id"]
        indexes = [models.Index(fields=["version", "split"], name="dataset_item_split")]

    def __str__(self) -> str:
        return self.row_id

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableError("a frozen dataset row cannot change")
        super().save(*args, **kwargs)
