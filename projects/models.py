from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils.text import slugify

from worker.taskspec import TaskSpec


class OutputKind(models.TextChoices):
    LABEL = "label", "Label (a fixed label set)"
    JSON = "json", "JSON (validated by a JSON Schema)"
    TEXT = "text", "Free text"


class Project(models.Model):
    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    # How the API, the CLI and the gateway name the project inside its team; filled from the
    # name when the project is first saved (project_slug_for), never changed after.
    slug = models.SlugField(max_length=80, blank=True)
    description = models.TextField(blank=True)
    # The task spec. input_fields are the named fields of each input row that the template uses.
    input_fields = models.JSONField(default=list)
    instruction_template = models.TextField(blank=True)
    system_prompt = models.TextField(blank=True)
    output_kind = models.CharField(
        max_length=8, choices=OutputKind.choices, default=OutputKind.LABEL
    )
    label_set = models.JSONField(default=list, blank=True)
    json_schema = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "slug"],
                condition=~models.Q(slug=""),
                name="project_slug_unique_per_team",
            )
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.slug:
            self.slug = project_slug_for(self.team_id, self.name)
        super().save(*args, **kwargs)

    @property
    def metric_name(self) -> str:
        return {"label": "accuracy", "json": "field F1", "text": "ROUGE-L"}[self.output_kind]

    @property
    def has_task(self) -> bool:
        return bool(self.instruction_template.strip() and self.input_fields)

    def task_spec(self) -> TaskSpec:
        return TaskSpec(
            instruction_template=self.instruction_template,
            output_kind=self.output_kind,  # type: ignore[arg-type]
            input_fields=tuple(self.input_fields),
            system_prompt=self.system_prompt,
            label_set=tuple(self.label_set or ()),
            json_schema=self.json_schema,
        )


def project_slug_for(team_id: int, name: str) -> str:
    """A slug for a new project: the name's, made unique in the team with -2, -3…"""
    base = slugify(name)[:70] or "project"
    taken = set(
        Project.objects.filter(team_id=team_id, slug__startswith=base).values_list(
            "slug", flat=True
        )
    )
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    return slug


class InputRow(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="inputs")
    data: models.JSONField[dict[str, Any]] = models.JSONField()
    # The human reference output for this input, when the upload had one.
    reference_output = models.TextField(null=True, blank=True)  # noqa: DJ001 (absent ≠ empty)
    content_hash = models.CharField(max_length=64)
    # Lower-cased text of all fields, for search without JSON operators.
    search_text = models.TextField(blank=True)
    source_line = models.PositiveIntegerField(null=True, blank=True)
    import_job = models.ForeignKey(
        "jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "content_hash"], name="inputs_unique_content_per_project"
            )
        ]

    def __str__(self) -> str:
        return f"input #{self.pk}"


class InputUpload(models.Model):
    """An uploaded file waiting for (or imported through) a column mapping."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="uploads"
    )
    file_name = models.CharField(max_length=255)
    file_path = models.CharField(max_length=500)  # relative to DATA_DIR
    format = models.CharField(max_length=8)
    columns = models.JSONField(default=list)
    size_bytes = models.BigIntegerField(default=0)
    job = models.ForeignKey(
        "jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.file_name
