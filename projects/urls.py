from django.urls import path

from . import views

app_name = "projects"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("teams/new/", views.team_create, name="team_create"),
    path("teams/<int:team_id>/switch/", views.team_switch, name="team_switch"),
    path("teams/<int:team_id>/members/", views.team_members, name="team_members"),
    path(
        "teams/<int:team_id>/members/<int:membership_id>/role/",
        views.member_role,
        name="member_role",
    ),
    path(
        "teams/<int:team_id>/members/<int:membership_id>/remove/",
        views.member_remove,
        name="member_remove",
    ),
    path(
        "teams/<int:team_id>/invites/<int:invite_id>/revoke/",
        views.invite_revoke,
        name="invite_revoke",
    ),
    path("teams/<int:team_id>/credentials/", views.credentials, name="credentials"),
    path(
        "teams/<int:team_id>/credentials/<int:credential_id>/",
        views.credential_edit,
        name="credential_edit",
    ),
    path(
        "teams/<int:team_id>/credentials/<int:credential_id>/delete/",
        views.credential_delete,
        name="credential_delete",
    ),
    path("teams/<int:team_id>/projects/new/", views.project_create, name="project_create"),
    path("invites/<str:token>/", views.invite_accept, name="invite_accept"),
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
