from django.urls import path

from teams import views

app_name = "teams"

urlpatterns = [
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
    path("teams/<int:team_id>/tokens/", views.api_tokens, name="api_tokens"),
    path(
        "teams/<int:team_id>/tokens/<int:token_id>/revoke/",
        views.api_token_revoke,
        name="api_token_revoke",
    ),
    path("invites/<str:token>/", views.invite_accept, name="invite_accept"),
]
