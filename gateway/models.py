"""The task gateway's rows: a routing policy per project (with its audit trail), one row per
answered request, and the count of records the write-behind queue had to drop."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Mode(models.TextChoices):
    TEACHER = "teacher", "Teacher answers (recorded for the next dataset version)"
    SHADOW = "shadow", "Shadow: teacher answers, the student answers the same inputs in background"
    CANARY = "canary", "Canary: a seeded share of requests goes to the student"
    CASCADE = "cascade", "Cascade: the student when confident, else the teacher"
    STUDENT = "student", "Student only (teacher as fallback when the student is down)"


class GatewayPolicy(models.Model):
    """How one project's production requests are routed. Read by every request through a cache
    of a few seconds (gateway.routing), so a change takes effect without a restart."""

    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="gateway_policy"
    )
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.TEACHER)
    # The teacher: a team credential and the model name sent with it.
    credential = models.ForeignKey(
        "teams.ProviderCredential",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    teacher_model = models.CharField(max_length=200, blank=True)
    teacher_max_tokens = models.PositiveIntegerField(default=256)
    # The student: a model served by the serving process (its slug is the ``model`` sent).
    served_model = models.ForeignKey(
        "serving.ServedModel", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    student_timeout_ms = models.PositiveIntegerField(default=2000)
    canary_percent = models.PositiveSmallIntegerField(default=10)
    cascade_threshold = models.FloatField(default=0.9)
    seed = models.PositiveIntegerField(default=1)
    # Recording real traffic as inputs + teacher outputs of the project.
    record_inputs = models.BooleanField(default=True)
    sample_rate = models.FloatField(default=1.0)  # share of requests recorded (and, for
    # requests the student answered, also sent to the teacher to measure agreement)
    retention_days = models.PositiveIntegerField(default=30)  # of the gateway's request log
    agreement_target_percent = models.PositiveSmallIntegerField(default=95)
    monthly_budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    # Over budget: answer with the student (when one is served) instead of refusing.
    budget_fallback_to_student = models.BooleanField(default=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.project}: {self.mode}"


class PolicyChange(models.Model):
    """The audit trail: who changed which settings of the policy, when, from what to what."""

    policy = models.ForeignKey(
        "gateway.GatewayPolicy", on_delete=models.CASCADE, related_name="changes"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    changes = models.JSONField(default=dict)  # field -> [before, after]
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return ", ".join(self.changes) or "no change"


class AnsweredBy(models.TextChoices):
    TEACHER = "teacher", "Teacher"
    STUDENT = "student", "Student"
    NONE = "none", "Nobody (error)"


class GatewayRequest(models.Model):
    """One input answered through the gateway (a batch is one row per input)."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="gateway_requests"
    )
    created_at = models.DateTimeField(db_index=True)
    mode = models.CharField(max_length=8, choices=Mode.choices)
    answered_by = models.CharField(max_length=8, choices=AnsweredBy.choices)
    # Why the other one did not answer: "student_timeout", "student_down", "low_confidence",
    # "over_budget", ... (blank when the policy chose as usual).
    reason = models.CharField(max_length=40, blank=True)
    status = models.PositiveSmallIntegerField(default=200)
    latency_ms = models.FloatField()  # the whole answer as the caller waited for it
    teacher_ms = models.FloatField(null=True, blank=True)
    student_ms = models.FloatField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)  # teacher, paid
    from_cache = models.BooleanField(default=False)
    input_hash = models.CharField(max_length=64)
    input_chars = models.PositiveIntegerField(default=0)
    unseen_share = models.FloatField(null=True, blank=True)  # words not in the training version
    answer = models.JSONField(null=True, blank=True)  # the parsed answer returned
    teacher_answer = models.TextField(null=True, blank=True)  # noqa: DJ001 canonical; None: unknown
    student_answer = models.TextField(null=True, blank=True)  # noqa: DJ001 canonical; None: unknown
    student_confidence = models.FloatField(null=True, blank=True)
    agrees = models.BooleanField(null=True, blank=True)  # None: only one of them answered
    sampled = models.BooleanField(default=False)  # chosen for recording by the sample rate
    recorded_input_id = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "created_at"], name="gateway_req_project_time")]

    def __str__(self) -> str:
        return f"{self.answered_by} in {self.latency_ms:.0f} ms"


class GatewayDrops(models.Model):
    """Records the write-behind queue could not take (it was full): counted, never silent.
    One row per project, incremented with an UPDATE when a drop happens."""

    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="gateway_drops"
    )
    dropped = models.PositiveBigIntegerField(default=0)
    dropped_cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    last_dropped_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.dropped} dropped"
