from __future__ import annotations

from django.conf import settings
from django.db import models


class ReviewStatus(models.TextChoices):
    UNREVIEWED = "unreviewed", "Unreviewed"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EDITED = "edited", "Edited"


class TeacherOutput(models.Model):
    """What a teacher answered for one input (one sample), and what reviewers decided about it."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="teacher_outputs"
    )
    run = models.ForeignKey("teachers.TeacherRun", on_delete=models.CASCADE, related_name="outputs")
    input = models.ForeignKey(
        "projects.InputRow", on_delete=models.CASCADE, related_name="teacher_outputs"
    )
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
    # The teacher's distribution over the label set ({label: probability}, label tasks whose
    # teacher gave logprobs; worker.teachers.confidence.label_distribution): soft labels.
    label_distribution = models.JSONField(null=True, blank=True)
    # The teacher's short reason, kept apart from the answer (tasks that ask for one, imported
    # logs that carry one); reviewers may edit it. Never checked or scored.
    rationale = models.TextField(blank=True)
    cache_key = models.CharField(max_length=64, blank=True)
    from_cache = models.BooleanField(default=False)
    # Review state. The edited value replaces `parsed` when the output is frozen into a version.
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
        "review.ReviewRule", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The optional LLM judge: normalised score in [0, 1] and its reason (or why it failed).
    judge_score = models.FloatField(null=True, blank=True)
    judge_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_teacheroutput"
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

    output = models.ForeignKey(
        "teachers.TeacherOutput", on_delete=models.CASCADE, related_name="flags"
    )
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    code = models.CharField(max_length=40)
    message = models.TextField(blank=True)
    score = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects_outputflag"
        indexes = [models.Index(fields=["project", "code"], name="flag_project_code")]
        constraints = [models.UniqueConstraint(fields=["output", "code"], name="one_flag_per_code")]

    def __str__(self) -> str:
        return self.code


class PriceEntry(models.Model):
    """A team's price for a model, overriding worker.pricing's shipped table. USD per 1M tokens."""

    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="prices")
    model = models.CharField(max_length=120)
    input_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    output_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    # Fraction of the price charged in batch mode (0.5 = half price).
    batch_multiplier = models.DecimalField(max_digits=4, decimal_places=3, default=0.5)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_priceentry"
        ordering = ["model"]
        constraints = [
            models.UniqueConstraint(fields=["team", "model"], name="one_price_per_model")
        ]

    def __str__(self) -> str:
        return f"{self.model}: ${self.input_usd_per_mtok}/${self.output_usd_per_mtok} per 1M"


class TeacherRunMode(models.TextChoices):
    LIVE = "live", "Live calls"
    BATCH = "batch", "Batch API"
    IMPORTED = "imported", "Imported outputs"
    # A teacher writing new inputs (teachers.synthesis): its calls are metered in the ledger
    # like any run's; it labels nothing.
    SYNTHETIC = "synthetic", "Synthetic inputs"


class TeacherRun(models.Model):
    """A teacher labelling a project's inputs. Its Job carries status and progress."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="teacher_run")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="teacher_runs"
    )
    credential = models.ForeignKey(
        "teams.ProviderCredential",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    provider = models.CharField(
        max_length=24
    )  # openai | anthropic | openai_compatible | local_hf | imported
    model = models.CharField(max_length=200)
    mode = models.CharField(
        max_length=12, choices=TeacherRunMode.choices, default=TeacherRunMode.LIVE
    )
    temperature = models.FloatField(default=0.0)
    max_tokens = models.PositiveIntegerField(default=256)
    samples_per_input = models.PositiveSmallIntegerField(default=1)
    concurrency = models.PositiveSmallIntegerField(default=8)
    budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    # How inputs were chosen ({"kind": "all"|"sample"|"filter", ...}) and the ids chosen, so a
    # resumed or repeated run covers exactly the same inputs.
    selection = models.JSONField(default=dict, blank=True)
    input_ids = models.JSONField(default=list, blank=True)
    estimate = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=255, blank=True)  # imported: the file it came from
    batch_state = models.JSONField(default=dict, blank=True)  # provider batch ids and status
    # provider=local_hf: the model directory on the worker (under an allowed root).
    local_model_path = models.CharField(max_length=500, blank=True)
    # Asked by a user; the running task stops at its next check and the job becomes "paused".
    pause_requested = models.BooleanField(default=False)
    # When the current stretch of work (first start or a resume) began, and how many outputs were
    # stored before it: the run page's ETA is the rate since then.
    segment_started_at = models.DateTimeField(null=True, blank=True)
    segment_done_start = models.PositiveIntegerField(default=0)
    # Running totals; the ledger is the source of truth and these are kept equal to its sums.
    calls_made = models.PositiveIntegerField(default=0)
    cache_hits = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    stopped_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_teacherrun"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.model} on {self.project} ({self.mode})"


class LedgerStatus(models.TextChoices):
    SENT = "sent", "Sent, no answer recorded"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    # A "sent" row left by an attempt that died (a killed worker) before its answer was recorded:
    # the provider may have answered and billed it, and the resumed run sends the input again.
    LOST = "lost", "Sent, the worker died before the answer: possibly paid"


class LedgerEntry(models.Model):
    """One provider call that was sent. Written BEFORE the call, so a crash leaves a trace."""

    run = models.ForeignKey("teachers.TeacherRun", on_delete=models.CASCADE, related_name="ledger")
    input = models.ForeignKey(
        "projects.InputRow", on_delete=models.SET_NULL, null=True, related_name="+"
    )
    sample_index = models.PositiveSmallIntegerField(default=0)
    cache_key = models.CharField(max_length=64)
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(
        max_length=12, choices=LedgerStatus.choices, default=LedgerStatus.SENT
    )
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    # The call's worst case when it was sent (prompt tokens + max_tokens at the run's price): what
    # a lost call is charged. Null on rows written before it was recorded.
    estimated_cost_usd = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    provider_request_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "jobs_ledgerentry"
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "status"], name="ledger_run_status")]

    def __str__(self) -> str:
        return f"call {self.cache_key[:8]} ({self.status})"


class CachedResponse(models.Model):
    """Content-addressed teacher responses, per team: the same request is never paid twice."""

    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64)
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_cachedresponse"
        constraints = [
            models.UniqueConstraint(fields=["team", "key"], name="one_cached_response_per_key")
        ]

    def __str__(self) -> str:
        return self.key
