from django.urls import path

from teachers import views

app_name = "teachers"

urlpatterns = [
    path("projects/<int:project_id>/teacher-runs/", views.run_list, name="teacher_runs"),
    path("projects/<int:project_id>/teacher-runs/new/", views.run_new, name="teacher_run_new"),
    path(
        "projects/<int:project_id>/teacher-runs/import/",
        views.run_import,
        name="teacher_run_import",
    ),
    path(
        "projects/<int:project_id>/synthetic-inputs/new/",
        views.synthesis_new,
        name="synthesis_new",
    ),
    path("teacher-runs/<int:run_id>/", views.run_detail, name="teacher_run"),
    path("teacher-runs/<int:run_id>/progress/", views.run_progress, name="teacher_run_progress"),
    path("teacher-runs/<int:run_id>/pause/", views.run_pause, name="teacher_run_pause"),
    path("teacher-runs/<int:run_id>/resume/", views.run_resume, name="teacher_run_resume"),
    path("teacher-runs/<int:run_id>/cancel/", views.run_cancel, name="teacher_run_cancel"),
    path("teams/<int:team_id>/prices/", views.prices, name="prices"),
    path(
        "teams/<int:team_id>/prices/<int:price_id>/delete/", views.price_delete, name="price_delete"
    ),
]
