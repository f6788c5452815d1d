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
    # Review bookkeeping (projects.review_services). Every decision bumps review_version; a
    # decision is only accepted against the version the reviewer saw, so two people deciding at
    # the same moment produce one decision, never two.
    review_version = models.PositiveIntegerField(default=0)
    # Two assigned reviewers disagreed; an owner resolves it, and until then it is not frozen.
    review_conflict = models.BooleanField(default=False)
    decided_by_rule = models.ForeignKey(
        "ReviewRule", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The optional LLM judge: normalised score in [0, 1] and its reason (or why it failed).
    judge_score = models.FloatField(null=True, blank=True)
    judge_reason = models.TextField(blank=True)
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
            models.Index(fields=["project", "id"], name="output_project_id"),
            models.Index(fields=["project", "reviewed_by"], name="output_project_reviewer"),
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


# ===============================================================================================
# Review and datasets (issue 4): rules, decisions, comments, assignments, audit, dataset versions
# ===============================================================================================


class ReviewRule(models.Model):
    """An owner's auto rule (worker.checks rule language), applied in `position` order."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="review_rules")
    name = models.CharField(max_length=120)
    definition = models.JSONField()  # {"action": "approve", "when": {...}}
    position = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def action(self) -> str:
        return str(self.definition.get("action", ""))


class DecisionKind(models.TextChoices):
    MANUAL = "manual", "Reviewer"
    BULK = "bulk", "Bulk action"
    RULE = "rule", "Auto rule"
    CORRECTION = "correction", "Correction applied to identical outputs"
    RESOLUTION = "resolution", "Conflict resolved by an owner"


class ReviewDecision(models.Model):
    """One decision on one output: who (or which rule), what, and the state it replaced.

    `counts_for_output` is False for an assigned second reviewer's independent decision on an
    overlap item: it is recorded for agreement, and marks a conflict when it disagrees, but does
    not overwrite the first reviewer's decision."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    output = models.ForeignKey(TeacherOutput, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=12, choices=DecisionKind.choices)
    status = models.CharField(max_length=12, choices=ReviewStatus.choices)
    edited_value = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    rule = models.ForeignKey(
        ReviewRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    counts_for_output = models.BooleanField(default=True)
    before = models.JSONField(default=dict)  # the output's review state before this decision
    version_after = models.PositiveIntegerField(default=0)
    undone_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "reviewer", "kind"], name="decision_project_reviewer"),
            models.Index(fields=["output", "reviewer"], name="decision_output_reviewer"),
        ]

    def __str__(self) -> str:
        return f"{self.status} on output #{self.output_id}"


class ReviewComment(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    output = models.ForeignKey(TeacherOutput, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"comment on output #{self.output_id}"


class ReviewAssignment(models.Model):
    """An output in a reviewer's share of the queue. Overlap items have two reviewers."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    output = models.ForeignKey(TeacherOutput, on_delete=models.CASCADE, related_name="assignments")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["output", "reviewer"], name="one_assignment_each")
        ]
        indexes = [models.Index(fields=["project", "reviewer"], name="assignment_reviewer")]

    def __str__(self) -> str:
        return f"output #{self.output_id} → {self.reviewer_id}"


class JudgeScale(models.TextChoices):
    ONE_TO_FIVE = "1-5", "1 (unacceptable) to 5 (perfect)"
    ZERO_TO_ONE = "0-1", "0 (unacceptable) to 1 (perfect)"


class ReviewSettings(models.Model):
    """Per-project review settings: the optional LLM judge's rubric and model."""

    project = models.OneToOneField(
        Project, on_delete=models.CASCADE, related_name="review_settings"
    )
    judge_rubric = models.TextField(blank=True)
    judge_scale = models.CharField(
        max_length=4, choices=JudgeScale.choices, default=JudgeScale.ONE_TO_FIVE
    )
    judge_pass_score = models.FloatField(null=True, blank=True)
    judge_credential = models.ForeignKey(
        ProviderCredential, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    judge_model = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"review settings of {self.project}"


class AuditAction(models.TextChoices):
    DECISION = "decision", "Decision"
    UNDO = "undo", "Undo"
    BULK = "bulk", "Bulk action"
    RULE_APPLIED = "rule_applied", "Auto rule applied"
    RULE_CHANGED = "rule_changed", "Auto rules changed"
    CORRECTION = "correction", "Correction applied to identical outputs"
    COMMENT = "comment", "Comment"
    ASSIGNMENT = "assignment", "Assignment"
    RESOLUTION = "resolution", "Conflict resolved"
    CHECKS = "checks", "Automatic checks"
    FREEZE = "freeze", "Dataset frozen"


class AuditEvent(models.Model):
    """Who did what, when, with the state before and after. Written by services, never edited."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    output = models.ForeignKey(
        TeacherOutput, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    rule = models.ForeignKey(
        ReviewRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    dataset_version = models.ForeignKey(
        "DatasetVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    summary = models.CharField(max_length=500)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["project", "-id"], name="audit_project_recent"),
            models.Index(fields=["project", "action"], name="audit_project_action"),
            models.Index(fields=["project", "output"], name="audit_project_output"),
        ]

    def __str__(self) -> str:
        return self.summary


class ImmutableError(Exception):
    """A frozen dataset version (or one of its rows) was about to be changed."""


class DatasetVersion(models.Model):
    """A frozen, named, hashed dataset. Never changes once written (save() refuses updates)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="dataset_versions")
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

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="items")
    row_id = models.CharField(max_length=40)
    split = models.CharField(max_length=12)
    source = models.CharField(max_length=20)
    group = models.PositiveIntegerField(default=0)
    inputs: models.JSONField[dict[str, Any]] = models.JSONField()
    output = models.TextField()
    decision_ids = models.JSONField(default=list)
    # Where it came from; plain ids (not foreign keys) so nothing can ever rewrite a frozen row.
    teacher_output_id = models.BigIntegerField(null=True, blank=True)
    input_row_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["version", "split"], name="dataset_item_split")]

    def __str__(self) -> str:
        return self.row_id

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableError("a frozen dataset row cannot change")
        super().save(*args, **kwargs)
