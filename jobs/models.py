from __future__ import annotations

from django.conf import settings
from django.db import models


class JobKind(models.TextChoices):
    IMPORT_INPUTS = "import_inputs", "Input import"
    TEACHER_RUN = "teacher_run", "Teacher run"
    SYNTHESIZE_INPUTS = "synthesize_inputs", "Synthetic inputs"
    FINE_TUNE = "fine_tune", "Fine-tuning"
    EVALUATION = "evaluation", "Evaluation"
    EXPERIMENT = "experiment", "Weekend experiment"
    # Review and dataset versions
    REVIEW_CHECKS = "review_checks", "Review checks"
    DATASET_FREEZE = "dataset_freeze", "Dataset freeze"
    # Shipping a student
    EXPORT_BUNDLE = "export_bundle", "Export bundle"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    # Stopped on purpose (a user's pause, or a teacher run's budget cap); resuming re-queues it.
    PAUSED = "paused", "Paused"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Job(models.Model):
    """One unit of background work. Its status changes only through jobs.services."""

    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="jobs")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, null=True, blank=True, related_name="jobs"
    )
    kind = models.CharField(max_length=24, choices=JobKind.choices)
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    queue = models.CharField(max_length=16, default="default")
    # Plain parameters for the worker: ids, paths relative to DATA_DIR, settings. Never secrets.
    params = models.JSONField(default=dict, blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    # Small live figures (current loss, cost so far, phase...) shown on the job page.
    figures = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the job's message was handed to the broker (null: not sent yet, e.g. the broker was
    # down; the reaper sends it when the broker is back).
    sent_at = models.DateTimeField(null=True, blank=True)
    send_error = models.CharField(max_length=300, blank=True)
    # progress_done when the current attempt claimed the job: an attempt that moved it on does
    # not count toward the reaper's limit.
    progress_at_claim = models.PositiveIntegerField(default=0)
    # Attempts in a row whose worker died without moving the job on (the reaper's limit).
    stalled_attempts = models.PositiveSmallIntegerField(default=0)
    # Set while a heavy job waits for the worker machine's compute (one heavy job at a time).
    waiting = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="job_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def percent(self) -> int:
        if self.status == JobStatus.SUCCEEDED:
            return 100
        if not self.progress_total:
            return 0
        return min(100, int(100 * self.progress_done / self.progress_total))


class WorkerInfo(models.Model):
    """What a Celery worker reported when it started (workers are shared, not team objects)."""

    hostname = models.CharField(max_length=255, unique=True)
    queues = models.JSONField(default=list)
    cuda_devices = models.JSONField(default=list)  # [{"name": ..., "memory_gb": ...}]
    cpu_cores = models.PositiveIntegerField(default=0)
    versions = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @property
    def has_gpu(self) -> bool:
        return bool(self.cuda_devices)
