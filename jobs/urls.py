from django.urls import path

from jobs import views

app_name = "jobs"

urlpatterns = [
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/status/", views.job_status, name="job_status"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
]

# Teacher runs and prices (jobs.teacher_views)
from jobs import teacher_views  # noqa: E402

urlpatterns += [
    path(
        "projects/<int:project_id>/teacher-runs/",
        teacher_views.run_list,
        name="teacher_runs",
    ),
    path(
        "projects/<int:project_id>/teacher-runs/new/",
        teacher_views.run_new,
        name="teacher_run_new",
    ),
    path(
        "projects/<int:project_id>/teacher-runs/import/",
        teacher_views.run_import,
        name="teacher_run_import",
    ),
    path("teacher-runs/<int:run_id>/", teacher_views.run_detail, name="teacher_run"),
    path(
        "teacher-runs/<int:run_id>/progress/",
        teacher_views.run_progress,
        name="teacher_run_progress",
    ),
    path("teacher-runs/<int:run_id>/pause/", teacher_views.run_pause, name="teacher_run_pause"),
    path("teacher-runs/<int:run_id>/resume/", teacher_views.run_resume, name="teacher_run_resume"),
    path("teacher-runs/<int:run_id>/cancel/", teacher_views.run_cancel, name="teacher_run_cancel"),
    path("teams/<int:team_id>/prices/", teacher_views.prices, name="prices"),
    path(
        "teams/<int:team_id>/prices/<int:price_id>/delete/",
        teacher_views.price_delete,
        name="price_delete",
    ),
]

# Fine-tuning and the student registry (jobs.finetune_views)
from jobs import finetune_views  # noqa: E402

urlpatterns += [
    path(
        "projects/<int:project_id>/datasets/<int:version_id>/fine-tune/",
        finetune_views.finetune_new,
        name="finetune_new",
    ),
    path("projects/<int:project_id>/fine-tunes/", finetune_views.finetune_list, name="finetunes"),
    path("fine-tunes/<int:finetune_id>/", finetune_views.finetune_detail, name="finetune_detail"),
    path(
        "fine-tunes/<int:finetune_id>/status/",
        finetune_views.finetune_status,
        name="finetune_status",
    ),
    path(
        "fine-tunes/<int:finetune_id>/points.json",
        finetune_views.finetune_points,
        name="finetune_points",
    ),
    path(
        "fine-tunes/<int:finetune_id>/cancel/",
        finetune_views.finetune_cancel,
        name="finetune_cancel",
    ),
    path(
        "fine-tunes/<int:finetune_id>/resume/",
        finetune_views.finetune_resume,
        name="finetune_resume",
    ),
    path("teams/<int:team_id>/students/", finetune_views.students, name="students"),
    path("students/<int:student_id>/", finetune_views.student_detail, name="student_detail"),
    path(
        "students/<int:student_id>/download/<slug:artifact>/",
        finetune_views.student_download,
        name="student_download",
    ),
    path(
        "students/<int:student_id>/download/<slug:artifact>/<str:filename>",
        finetune_views.student_file,
        name="student_file",
    ),
]

# Evaluation, comparison, votes and the weekend experiment (jobs.evaluation_views)
from jobs import evaluation_views  # noqa: E402

urlpatterns += [
    path(
        "projects/<int:project_id>/evaluations/",
        evaluation_views.evaluation_list,
        name="evaluations",
    ),
    path(
        "projects/<int:project_id>/evaluations/new/",
        evaluation_views.evaluation_new,
        name="evaluation_new",
    ),
    path(
        "projects/<int:project_id>/experiment/",
        evaluation_views.experiment,
        name="experiment",
    ),
    path("evaluations/<int:evaluation_id>/", evaluation_views.evaluation_detail, name="evaluation"),
    path(
        "evaluations/<int:evaluation_id>/compare/",
        evaluation_views.evaluation_compare,
        name="evaluation_compare",
    ),
    path(
        "evaluations/<int:evaluation_id>/examples/<int:example_id>/vote/",
        evaluation_views.evaluation_vote,
        name="evaluation_vote",
    ),
    path(
        "evaluations/<int:evaluation_id>/votes/dpo.jsonl",
        evaluation_views.evaluation_dpo,
        name="evaluation_dpo",
    ),
]
