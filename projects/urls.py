from django.urls import path

from projects import views

app_name = "projects"

urlpatterns = [
    path("teams/<int:team_id>/projects/new/", views.project_create, name="project_create"),
    path("projects/<int:project_id>/", views.project_detail, name="project_detail"),
    path("projects/<int:project_id>/task/", views.task_edit, name="task_edit"),
    path("projects/<int:project_id>/task/preview/", views.task_preview, name="task_preview"),
    path("projects/<int:project_id>/inputs/", views.inputs_list, name="inputs_list"),
    path("projects/<int:project_id>/inputs/upload/", views.inputs_upload, name="inputs_upload"),
    path(
        "projects/<int:project_id>/inputs/<int:input_id>/", views.input_detail, name="input_detail"
    ),
    path(
        "projects/<int:project_id>/uploads/<int:upload_id>/map/",
        views.upload_map,
        name="upload_map",
    ),
]
