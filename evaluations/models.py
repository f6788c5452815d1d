from __future__ import annotations

from django.conf import settings
from django.db import models


class EvaluationKind(models.TextChoices):
    EVALUATION = "evaluation", "Evaluation"
    EXPERIMENT = "experiment", "Weekend experiment"
    # One fine-tune's recipe retrained on nested subsets of its train split, every student
    # scored on the same test examples (evaluations.learning_curve).
    CURVE = "curve", "Learning curve"


class Evaluation(models.Model):
    """Candidates answering the same examples (a frozen test split, or a sample of inputs for a
    weekend experiment). Every candidate output is stored, so every number is recomputable."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="evaluation")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="evaluations"
    )
    kind = models.CharField(
        max_length=12, choices=EvaluationKind.choices, default=EvaluationKind.EVALUATION
    )
    name = models.CharField(max_length=200, blank=True)
    dataset_version = models.ForeignKey(
        "dataset_versions.DatasetVersion",
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
        db_table = "jobs_evaluation"
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
    evaluation = models.ForeignKey(
        "evaluations.Evaluation", on_delete=models.CASCADE, related_name="candidates"
    )
    position = models.PositiveSmallIntegerField(default=0)
    role = models.CharField(max_length=12, choices=CandidateRole.choices)
    source = models.CharField(max_length=12, choices=CandidateSource.choices)
    name = models.CharField(max_length=200)
    # stored: the run to reuse (None: the latest output per input); api teacher: the run made
    # for inputs that had no stored output.
    teacher_run = models.ForeignKey(
        "teachers.TeacherRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    credential = models.ForeignKey(
        "teams.ProviderCredential",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    model = models.CharField(max_length=200, blank=True)  # API model name
    model_path = models.CharField(max_length=500, blank=True)  # local: relative to DATA_DIR
    # Local students picked from the team's registry (lineage: fine-tune, training time).
    student_model = models.ForeignKey(
        "finetunes.StudentModel", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=12, default="pending")  # pending|running|done|failed
    error = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)  # worker.metrics result .to_dict()
    headline = models.FloatField(null=True, blank=True)
    # latency {p50_ms, p95_ms, n, how}, throughput {examples_per_s, n, seconds, batch_size, how},
    # hardware {...}, calls/tokens/cost for API candidates.
    performance = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "jobs_evalcandidate"
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.name


class EvalExample(models.Model):
    evaluation = models.ForeignKey(
        "evaluations.Evaluation", on_delete=models.CASCADE, related_name="examples"
    )
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
        db_table = "jobs_evalexample"
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "position"], name="eval_example_position_unique"
            )
        ]

    def __str__(self) -> str:
        return f"example {self.position}"


class EvalOutput(models.Model):
    example = models.ForeignKey(
        "evaluations.EvalExample", on_delete=models.CASCADE, related_name="outputs"
    )
    candidate = models.ForeignKey(
        "evaluations.EvalCandidate", on_delete=models.CASCADE, related_name="outputs"
    )
    raw_text = models.TextField(blank=True)
    parsed = models.JSONField(null=True, blank=True)
    parse_error = models.TextField(blank=True)
    canonical = models.TextField(null=True, blank=True)  # noqa: DJ001 (None: did not parse)
    missing = models.BooleanField(default=False)  # no answer at all (e.g. no stored output)
    score = models.FloatField(null=True, blank=True)  # per-example metric vs the reference
    correct = models.BooleanField(null=True, blank=True)
    agrees_with_teacher = models.BooleanField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    # Local students on label tasks: P(this answer, then end of turn) under the student, the
    # confidence the serving engine gives the cascade (None for every other candidate).
    confidence = models.FloatField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "jobs_evaloutput"
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

    evaluation = models.ForeignKey(
        "evaluations.Evaluation", on_delete=models.CASCADE, related_name="votes"
    )
    example = models.ForeignKey(
        "evaluations.EvalExample", on_delete=models.CASCADE, related_name="votes"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    candidate_a = models.ForeignKey(
        "evaluations.EvalCandidate", on_delete=models.CASCADE, related_name="+"
    )
    candidate_b = models.ForeignKey(
        "evaluations.EvalCandidate", on_delete=models.CASCADE, related_name="+"
    )
    choice = models.CharField(max_length=12, choices=VoteChoice.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_evalvote"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["example", "user", "candidate_a", "candidate_b"], name="one_vote_per_pair"
            )
        ]

    def __str__(self) -> str:
        return f"{self.choice} on example {self.example_id}"
