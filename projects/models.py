from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from worker.taskspec import TaskSpec


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ENGINEER = "engineer", "Engineer"
    REVIEWER = "reviewer", "Reviewer"
    VIEWER = "viewer", "Viewer"


# What each role may do. Checked in one place (projects.access) so views never spell it out.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({"read", "vote"}),
    Role.REVIEWER: frozenset({"read", "vote", "review"}),
    Role.ENGINEER: frozenset({"read", "vote", "review", "write"}),
    Role.OWNER: frozenset({"read", "vote", "review", "write", "manage"}),
}


class Team(models.Model):
    name = models.CharField(max_length=120)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="teams"
    )

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    def can(self, permission: str) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


def _invite_token() -> str:
    return secrets.token_urlsafe(24)


class Invite(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invites")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    token = models.CharField(max_length=64, unique=True, default=_invite_token)
    email = models.EmailField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    accepted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"invite to {self.team} as {self.role}"

    @property
    def is_usable(self) -> bool:
        return self.accepted_at is None and self.expires_at > timezone.now()


class OutputKind(models.TextChoices):
    LABEL = "label", "Label (a fixed label set)"
    JSON = "json", "JSON (validated by a JSON Schema)"
    TEXT = "text", "Free text"


class Project(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
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

    def __str__(self) -> str:
        return self.name

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


class InputRow(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="inputs")
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


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible endpoint"


class ProviderCredential(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="credentials")
    name = models.CharField(max_length=80)
    provider = models.CharField(max_length=24, choices=ProviderKind.choices)
    base_url = models.URLField(blank=True)
    # Self-hosted endpoints (vLLM on the LAN) live on private addresses; allowing them is an
    # owner's explicit decision because it lets the worker reach internal hosts.
    allow_private_network = models.BooleanField(default=False)
    encrypted_key = models.BinaryField()
    key_last4 = models.CharField(max_length=4)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="credential_name_unique_per_team")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_provider_display()}, …{self.key_last4})"


class InputUpload(models.Model):
    """An uploaded file waiting for (or imported through) a column mapping."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="uploads")
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


class ReviewStatus(models.TextChoices):
    UNREVIEWED = "unreviewed", "Unreviewed"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EDITED = "edited", "Edited"


class TeacherOutput(models.Model):
    """What a teacher answered for one input (one sample), and what reviewers decided about it."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="teacher_outputs")
    run = models.ForeignKey("jobs.TeacherRun", on_delete=models.CASCADE, related_name="outputs")
    input = models.ForeignKey(InputRow, on_delete=models.CASCADE, related_name="teacher_outputs")
    sample_index = models.PositiveSmallIntegerField(default=0)
    raw_text = models.TextField(blank=True)
    parsed = models.JSONField(null=True, blank=True)  # label/text: a string; json: the object
    parse_error = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=40, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    top_logprobs = models.JSONField(null=True, blank=True)
    cache_key = models.CharField(max_length=64, blank=True)
    from_cache = models.BooleanField(default=False)
    # Review state (issue: review and datasets). The edited value replaces `parsed` when frozen.
    review_status = models.CharField(
        max_length=12, choices=ReviewStatus.choices, default=ReviewStatus.UNREVIEWED
    )
    edited_value = models.JSONField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    flag_codes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "input", "sample_index"], name="one_output_per_run_input_sample"
            )
        ]
        indexes = [
            models.Index(fields=["project", "review_status"], name="output_project_status"),
            models.Index(fields=["project", "confidence"], name="output_project_confidence"),
        ]

    def __str__(self) -> str:
        return f"output #{self.pk}"


class OutputFlag(models.Model):
    """An automatic check's finding on a teacher output (a row each, so the queue can filter)."""

    output = models.ForeignKey(TeacherOutput, on_delete=models.CASCADE, related_name="flags")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    code = models.CharField(max_length=40)
    message = models.TextField(blank=True)
    score = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["project", "code"], name="flag_project_code")]
        constraints = [models.UniqueConstraint(fields=["output", "code"], name="one_flag_per_code")]

    def __str__(self) -> str:
        return self.code
