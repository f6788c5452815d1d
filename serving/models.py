from __future__ import annotations

from django.conf import settings
from django.db import models


class ServedModel(models.Model):
    """A student a team serves through Distillery's OpenAI-compatible endpoint.

    ``slug`` is the ``model`` name clients send; it is unique within the team (a token only ever
    sees its own team's models). Serving is switched on and off, never deleted, so the request
    log keeps its model; every switch is recorded in ``ServingChange`` (who, when)."""

    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="served_models")
    student = models.OneToOneField(
        "finetunes.StudentModel", on_delete=models.CASCADE, related_name="serving"
    )
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="served_models"
    )
    slug = models.SlugField(max_length=100)
    active = models.BooleanField(default=True)
    # Store each request's input and answer text in the log (off: figures only).
    log_inputs = models.BooleanField(default=False)
    served_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    served_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(fields=["team", "slug"], name="served_model_slug_per_team")
        ]

    def __str__(self) -> str:
        return self.slug


class ServingAction(models.TextChoices):
    SERVE = "serve", "Started serving"
    STOP = "stop", "Stopped serving"
    LOG_INPUTS_ON = "log_on", "Turned input logging on"
    LOG_INPUTS_OFF = "log_off", "Turned input logging off"


class ServingChange(models.Model):
    """The audit trail of a served model: who switched what, when."""

    served_model = models.ForeignKey(
        "serving.ServedModel", on_delete=models.CASCADE, related_name="changes"
    )
    action = models.CharField(max_length=8, choices=ServingAction.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} ({self.at:%Y-%m-%d %H:%M})"


class ServingRequest(models.Model):
    """One request the serving process answered (or refused), as measured there."""

    served_model = models.ForeignKey(
        "serving.ServedModel", on_delete=models.CASCADE, related_name="requests"
    )
    token_id = models.BigIntegerField(null=True, blank=True)  # the team API token used
    status = models.PositiveSmallIntegerField()  # HTTP status; 499: the client went away
    error_code = models.CharField(max_length=40, blank=True)
    stream = models.BooleanField(default=False)
    latency_ms = models.FloatField()  # request read to last byte written
    queue_ms = models.FloatField(default=0)  # of which waiting for the engine
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    confidence = models.FloatField(null=True, blank=True)  # label tasks
    engine = models.CharField(max_length=40, blank=True)
    input_text = models.TextField(blank=True)  # only when the model's log_inputs is on
    output_text = models.TextField(blank=True)  # likewise
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["served_model", "created_at"], name="serving_req_model_time")
        ]

    def __str__(self) -> str:
        return f"{self.status} in {self.latency_ms:.0f} ms"
