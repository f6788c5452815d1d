"""Forms for starting an evaluation or a weekend experiment; they turn into the service's
plain choices (evaluations.choices)."""

from __future__ import annotations

from typing import Any

from django import forms

from dataset_versions.models import DatasetVersion
from evaluations.choices import (
    BATCH_SIZE_LIMIT,
    DEFAULT_LATENCY_REQUESTS,
    LATENCY_REQUESTS_LIMIT,
    MAX_NEW_TOKENS_LIMIT,
    EndpointChoice,
    EvalOptions,
    StudentChoice,
    TeacherChoice,
)
from evaluations.estimates import evaluation_estimates
from evaluations.experiment import EXPERIMENT_SAMPLE, SAMPLE_LIMIT
from evaluations.learning_curve import DEFAULT_PERCENTS
from evaluations.models import CandidateRole, CandidateSource
from finetunes.models import FineTune, StudentKind, StudentModel
from projects.models import Project
from teachers.models import TeacherRun
from teams.models import ProviderCredential
from worker.inference import DEFAULT_BATCH_SIZE


def preselect_only_choice(form: forms.Form, name: str) -> None:
    """A choice with one possible answer starts answered (an unbound form only)."""
    queryset = getattr(form.fields[name], "queryset", None)
    if not form.is_bound and queryset is not None and queryset.count() == 1:
        form.fields[name].initial = queryset.first()


class _Candidates(forms.Form):
    teacher_run = forms.ModelChoiceField(
        queryset=TeacherRun.objects.none(),  # set per project
        required=False,
        empty_label="The latest stored answer for each input",
        help_text="Whose stored answers stand for the teacher.",
    )
    teacher_credential = forms.ModelChoiceField(
        queryset=ProviderCredential.objects.none(),
        required=False,
        empty_label="Don't call a teacher",
        label="Call the teacher for inputs without a stored answer",
    )
    teacher_model = forms.CharField(max_length=200, required=False, label="Teacher model")
    base_model = forms.ModelChoiceField(
        queryset=StudentModel.objects.none(), required=False, label="Untuned student (base model)"
    )
    max_new_tokens = forms.IntegerField(
        min_value=1,
        max_value=MAX_NEW_TOKENS_LIMIT,
        required=False,
        help_text="Empty: the longest label + 4 tokens (label tasks), 256 otherwise.",
    )
    batch_size = forms.IntegerField(
        min_value=1, max_value=BATCH_SIZE_LIMIT, initial=DEFAULT_BATCH_SIZE
    )
    latency_requests = forms.IntegerField(
        min_value=0,
        max_value=LATENCY_REQUESTS_LIMIT,
        initial=DEFAULT_LATENCY_REQUESTS,
        help_text="Single requests timed one at a time for the p50/p95 latency.",
    )

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        self.fields["teacher_run"].queryset = project.teacher_runs.order_by("-created_at")  # type: ignore[attr-defined]
        self.fields["teacher_credential"].queryset = project.team.credentials.all()  # type: ignore[attr-defined]
        self.fields["base_model"].queryset = StudentModel.objects.filter(  # type: ignore[attr-defined]
            team=project.team, kind=StudentKind.BASE
        )
        preselect_only_choice(self, "base_model")

    def options(self) -> EvalOptions:
        d = self.cleaned_data
        return EvalOptions(
            max_new_tokens=d.get("max_new_tokens"),
            batch_size=d.get("batch_size") or DEFAULT_BATCH_SIZE,
            latency_requests=(
                d["latency_requests"]
                if d.get("latency_requests") is not None
                else DEFAULT_LATENCY_REQUESTS
            ),
        )

    def teacher(self, source: str = CandidateSource.STORED) -> TeacherChoice:
        d = self.cleaned_data
        return TeacherChoice(
            source=source,
            run=d.get("teacher_run"),
            credential=d.get("teacher_credential"),
            model=d.get("teacher_model") or "",
        )


class EvaluationForm(_Candidates):
    dataset_version = forms.ModelChoiceField(
        queryset=DatasetVersion.objects.none(),
        help_text="Every candidate answers this version's test split.",
    )
    teacher_source = forms.ChoiceField(
        choices=[
            (CandidateSource.STORED, "The teacher's stored answers"),
            (CandidateSource.REFERENCES, "Human reference outputs (stand-in for a teacher)"),
        ],
        initial=CandidateSource.STORED,
    )
    distilled = forms.ModelMultipleChoiceField(
        queryset=StudentModel.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Distilled students",
    )
    endpoint_credential = forms.ModelChoiceField(
        queryset=ProviderCredential.objects.none(),
        required=False,
        empty_label="None",
        label="Also evaluate an OpenAI-compatible endpoint",
        help_text="E.g. a model already served by vLLM or Ollama (a team credential).",
    )
    endpoint_model = forms.CharField(max_length=200, required=False, label="Endpoint model")
    name = forms.CharField(max_length=200, required=False)

    field_order = [
        "dataset_version",
        "teacher_source",
        "teacher_run",
        "teacher_credential",
        "teacher_model",
        "base_model",
        "distilled",
        "endpoint_credential",
        "endpoint_model",
        "max_new_tokens",
        "batch_size",
        "latency_requests",
        "name",
    ]

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, project=project, **kwargs)
        self.fields["dataset_version"].queryset = project.dataset_versions.all()  # type: ignore[attr-defined]
        preselect_only_choice(self, "dataset_version")
        self.fields["distilled"].queryset = StudentModel.objects.filter(  # type: ignore[attr-defined]
            team=project.team, kind=StudentKind.DISTILLED
        ).order_by("-created_at")
        self.fields["endpoint_credential"].queryset = project.team.credentials.all()  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("endpoint_credential") and not (data.get("endpoint_model") or "").strip():
            self.add_error("endpoint_model", "name the model the endpoint serves")
        return data

    @property
    def time_estimates(self) -> dict[str, Any]:
        """How long each local student takes on the gpu-queue workers (evaluations.estimates)."""
        return evaluation_estimates(project=self.project)

    def students(self) -> list[StudentChoice]:
        d = self.cleaned_data
        students = []
        if d.get("base_model"):
            students.append(StudentChoice(CandidateRole.BASE, student_model=d["base_model"]))
        for model in d.get("distilled") or []:
            students.append(StudentChoice(CandidateRole.DISTILLED, student_model=model))
        return students

    def endpoints(self) -> list[EndpointChoice]:
        d = self.cleaned_data
        if not d.get("endpoint_credential"):
            return []
        return [EndpointChoice(credential=d["endpoint_credential"], model=d["endpoint_model"])]

    def start(self, *, project: Any, user: Any) -> Any:
        """Start the evaluation the cleaned form describes (the page and the API both start it
        this way). Raises ValidationError by field from evaluations.services."""
        from evaluations.services import evaluation_start

        return evaluation_start(
            project=project,
            user=user,
            teacher=self.teacher(self.cleaned_data["teacher_source"]),
            students=self.students(),
            endpoints=self.endpoints(),
            dataset_version=self.cleaned_data["dataset_version"],
            options=self.options(),
            name=self.cleaned_data.get("name") or "",
        )


class ExperimentForm(_Candidates):
    teacher_source = forms.ChoiceField(
        choices=[
            (CandidateSource.STORED, "Stored teacher answers (from a teacher run or an import)"),
            ("call", "Call a teacher now (a credential and a model)"),
            (
                CandidateSource.REFERENCES,
                "Human reference outputs standing in for a teacher",
            ),
        ],
        initial=CandidateSource.STORED,
    )
    sample_size = forms.IntegerField(min_value=1, max_value=SAMPLE_LIMIT, initial=EXPERIMENT_SAMPLE)
    seed = forms.IntegerField(min_value=0, initial=0)

    field_order = [
        "teacher_source",
        "teacher_run",
        "teacher_credential",
        "teacher_model",
        "base_model",
        "sample_size",
        "seed",
        "max_new_tokens",
        "batch_size",
        "latency_requests",
    ]

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, project=project, **kwargs)
        self.fields["base_model"].required = True
        self.fields["teacher_credential"].label = "Teacher credential"
        self.fields["latency_requests"].initial = 10

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("teacher_source") == "call":
            if not data.get("teacher_credential"):
                self.add_error("teacher_credential", "choose the credential to call the teacher")
            if not (data.get("teacher_model") or "").strip():
                self.add_error("teacher_model", "name the teacher model, e.g. gpt-4o-mini")
        return data

    def experiment_teacher(self) -> TeacherChoice:
        d = self.cleaned_data
        source = d["teacher_source"]
        if source == CandidateSource.REFERENCES:
            return TeacherChoice(source=CandidateSource.REFERENCES)
        if source == "call":
            return TeacherChoice(credential=d["teacher_credential"], model=d["teacher_model"])
        return TeacherChoice(run=d.get("teacher_run"))

    def base(self) -> StudentChoice:
        return StudentChoice(CandidateRole.BASE, student_model=self.cleaned_data["base_model"])


class VoteForm(forms.Form):
    choice = forms.CharField(max_length=12)
    a = forms.IntegerField()
    b = forms.IntegerField()


class LearningCurveForm(forms.Form):
    """A learning curve: a finished fine-tune's recipe retrained on smaller, nested shares of its
    training rows; every student answers the version's test split."""

    fine_tune = forms.ModelChoiceField(
        queryset=FineTune.objects.none(),
        label="Fine-tune whose recipe to retrain",
        help_text="Its student is the 100 % point; the same settings train the smaller ones.",
    )
    teacher_source = forms.ChoiceField(
        choices=[
            (CandidateSource.STORED, "The teacher's stored answers"),
            (CandidateSource.REFERENCES, "Human reference outputs (stand-in for a teacher)"),
        ],
        initial=CandidateSource.STORED,
    )
    teacher_run = forms.ModelChoiceField(
        queryset=TeacherRun.objects.none(),
        required=False,
        empty_label="The latest stored answer for each input",
    )
    percents = forms.CharField(
        max_length=100,
        initial=", ".join(str(p) for p in DEFAULT_PERCENTS),
        label="Smaller shares of the training rows (%)",
        help_text="Comma-separated, e.g. 25, 50. Each share is trained from scratch, nested "
        "(the 25 % rows are among the 50 %); a fourth size makes the forecast firmer.",
    )
    seed = forms.IntegerField(min_value=0, initial=0, help_text="Which rows each share takes.")
    batch_size = forms.IntegerField(
        min_value=1, max_value=BATCH_SIZE_LIMIT, initial=DEFAULT_BATCH_SIZE
    )
    name = forms.CharField(max_length=200, required=False)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        self.fields["fine_tune"].queryset = (  # type: ignore[attr-defined]
            FineTune.objects.filter(
                project=project, job__status="succeeded", result_model__isnull=False
            )
            .select_related("dataset_version")
            .order_by("-created_at")
        )
        self.fields["fine_tune"].label_from_instance = lambda ft: (  # type: ignore[attr-defined]
            f"#{ft.pk} {ft.base_model_name} on {ft.dataset_version.name} "
            f"({ft.n_train:,} training rows, {ft.preset or 'custom'})"
        )
        self.fields["teacher_run"].queryset = project.teacher_runs.order_by("-created_at")  # type: ignore[attr-defined]
        preselect_only_choice(self, "fine_tune")

    def clean_percents(self) -> list[int]:
        text = self.cleaned_data.get("percents") or ""
        try:
            values = [
                int(part.strip().rstrip("%").strip()) for part in text.split(",") if part.strip()
            ]
        except ValueError:
            raise forms.ValidationError(
                "whole percentages separated by commas, e.g. 25, 50"
            ) from None
        return values

    def teacher(self) -> TeacherChoice:
        d = self.cleaned_data
        return TeacherChoice(source=d["teacher_source"], run=d.get("teacher_run"))

    def options(self) -> EvalOptions:
        return EvalOptions(batch_size=self.cleaned_data.get("batch_size") or DEFAULT_BATCH_SIZE)
