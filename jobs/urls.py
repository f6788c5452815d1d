from django.urls import path

from . import views

app_name = "jobs"

urlpatterns = [
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/status/", views.job_status, name="job_status"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
]

# Teacher runs and prices (jobs.teacher_views)
from . import teacher_views  # noqa: E402

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
