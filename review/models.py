from __future__ import annotations

from django.conf import settings
from django.db import models

from teachers.models import ReviewStatus


class ReviewRule(models.Model):
    """An owner's auto rule (worker.checks rule language), applied in `position` order."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="review_rules"
    )
    name = models.CharField(max_length=120)
    definition = models.JSONField()  # {"action": "approve", "when": {...}}
    position = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_reviewrule"
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

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    output = models.ForeignKey(
        "teachers.TeacherOutput", on_delete=models.CASCADE, related_name="decisions"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=12, choices=DecisionKind.choices)
    status = models.CharField(max_length=12, choices=ReviewStatus.choices)
    edited_value = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    rule = models.ForeignKey(
        "review.ReviewRule", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    counts_for_output = models.BooleanField(default=True)
    before = models.JSONField(default=dict)  # the output's review state before this decision
    version_after = models.PositiveIntegerField(default=0)
    undone_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_reviewdecision"
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "reviewer", "kind"], name="decision_project_reviewer"),
            models.Index(fields=["output", "reviewer"], name="decision_output_reviewer"),
        ]

    def __str__(self) -> str:
        return f"{self.status} on output #{self.output_id}"


class ReviewComment(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    output = models.ForeignKey(
        "teachers.TeacherOutput", on_delete=models.CASCADE, related_name="comments"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_reviewcomment"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"comment on output #{self.output_id}"


class ReviewAssignment(models.Model):
    """An output in a reviewer's share of the queue. Overlap items have two reviewers."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    output = models.ForeignKey(
        "teachers.TeacherOutput", on_delete=models.CASCADE, related_name="assignments"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_reviewassignment"
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
        "projects.Project", on_delete=models.CASCADE, related_name="review_settings"
    )
    judge_rubric = models.TextField(blank=True)
    judge_scale = models.CharField(
        max_length=4, choices=JudgeScale.choices, default=JudgeScale.ONE_TO_FIVE
    )
    judge_pass_score = models.FloatField(null=True, blank=True)
    judge_credential = models.ForeignKey(
        "teams.ProviderCredential",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    judge_model = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "projects_reviewsettings"

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

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    output = models.ForeignKey(
        "teachers.TeacherOutput", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    rule = models.ForeignKey(
        "review.ReviewRule", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    dataset_version = models.ForeignKey(
        "dataset_versions.DatasetVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    summary = models.CharField(max_length=500)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_auditevent"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["project", "-id"], name="audit_project_recent"),
            models.Index(fields=["project", "action"], name="audit_project_action"),
            models.Index(fields=["project", "output"], name="audit_project_output"),
        ]

    def __str__(self) -> str:
        return self.summary
