"""The candidates of an evaluation, in order: the teacher, local students, endpoints. Each choice
is checked against the project's team before anything is created."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from evaluations.choices import EndpointChoice, StudentChoice, TeacherChoice
from evaluations.models import CandidateRole, CandidateSource, EvalCandidate
from projects.models import Project
from teachers.models import TeacherRunMode


def teacher_candidate(project: Project, teacher: TeacherChoice) -> EvalCandidate:
    if teacher.source == CandidateSource.REFERENCES:
        return EvalCandidate(
            role=CandidateRole.TEACHER,
            source=CandidateSource.REFERENCES,
            name="Human references (stand-in for a teacher; no model was called)",
        )
    if teacher.source != CandidateSource.STORED:
        raise ValidationError({"teacher": f"unknown teacher source {teacher.source!r}"})
    run = teacher.run
    if run is not None and run.project_id != project.pk:
        raise ValidationError({"teacher_run": "choose one of this project's teacher runs"})
    credential = teacher.credential
    if credential is not None:
        if credential.team_id != project.team_id:
            raise ValidationError({"teacher_credential": "choose one of this team's credentials"})
        if not teacher.model.strip():
            raise ValidationError({"teacher_model": "name the teacher model to call"})
    if run is not None:
        if run.mode == TeacherRunMode.IMPORTED:
            name = f"{run.model} (imported from {run.source}; no model was called)"
        else:
            name = f"{run.model} (stored outputs of teacher run #{run.pk})"
    elif credential is not None:
        name = f"{teacher.model.strip()} via {credential.name}"
    else:
        name = "Teacher (stored outputs)"
    return EvalCandidate(
        role=CandidateRole.TEACHER,
        source=CandidateSource.STORED,
        name=name[:200],
        teacher_run=run,
        credential=credential,
        model=teacher.model.strip()[:200],
    )


def student_candidate(project: Project, student: StudentChoice) -> EvalCandidate:
    from finetunes.services import resolve_local_model
    from jobs.storage import data_path, stored_path

    if student.role not in (CandidateRole.BASE, CandidateRole.DISTILLED):
        raise ValidationError({"students": f"unknown student role {student.role!r}"})
    field = "base_model" if student.role == CandidateRole.BASE else "students"
    registered = student.student_model
    if registered is not None:
        if registered.team_id != project.team_id:
            raise ValidationError({field: "choose one of this team's student models"})
        path = data_path(registered.path)
        if not (path / "config.json").is_file():
            raise ValidationError({field: f"{registered.name}: its model folder is missing"})
    else:
        path = resolve_local_model(student.path, field_name=field, team=project.team)
    default = "Untuned student" if student.role == CandidateRole.BASE else "Distilled student"
    name = student.name.strip() or (
        f"{default} ({registered.name})" if registered else f"{default} ({path.name})"
    )
    return EvalCandidate(
        role=student.role,
        source=CandidateSource.LOCAL,
        name=name[:200],
        model_path=stored_path(path),
        student_model=registered,
    )


def endpoint_candidate(project: Project, endpoint: EndpointChoice) -> EvalCandidate:
    if endpoint.credential.team_id != project.team_id:
        raise ValidationError({"endpoint_credential": "choose one of this team's credentials"})
    if not endpoint.model.strip():
        raise ValidationError({"endpoint_model": "name the model the endpoint serves"})
    return EvalCandidate(
        role=CandidateRole.ENDPOINT,
        source=CandidateSource.API,
        name=(endpoint.name.strip() or f"{endpoint.model.strip()} via {endpoint.credential.name}")[
            :200
        ],
        credential=endpoint.credential,
        model=endpoint.model.strip()[:200],
    )
