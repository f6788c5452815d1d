from django.urls import path

from projects import dataset_views, review_views, views

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

# Review and datasets (issue 4) ----------------------------------------------------------------
urlpatterns += [
    path("projects/<int:project_id>/review/", review_views.review_queue, name="review_queue"),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/",
        review_views.review_item,
        name="review_item",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/decide/",
        review_views.review_decide,
        name="review_decide",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/comment/",
        review_views.review_comment,
        name="review_comment",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/identical/",
        review_views.review_identical,
        name="review_identical",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/resolve/",
        review_views.review_resolve,
        name="review_resolve",
    ),
    path("projects/<int:project_id>/review/undo/", review_views.review_undo, name="review_undo"),
    path("projects/<int:project_id>/review/bulk/", review_views.review_bulk, name="review_bulk"),
    path(
        "projects/<int:project_id>/review/automation/",
        review_views.review_automation,
        name="review_automation",
    ),
    path(
        "projects/<int:project_id>/review/rules/",
        review_views.review_rule_create,
        name="review_rule_create",
    ),
    path(
        "projects/<int:project_id>/review/rules/apply/",
        review_views.review_rules_apply,
        name="review_rules_apply",
    ),
    path(
        "projects/<int:project_id>/review/rules/<int:rule_id>/delete/",
        review_views.review_rule_delete,
        name="review_rule_delete",
    ),
    path(
        "projects/<int:project_id>/review/assign/", review_views.review_assign, name="review_assign"
    ),
    path(
        "projects/<int:project_id>/review/agreement/",
        review_views.review_agreement,
        name="review_agreement",
    ),
    path("projects/<int:project_id>/audit/", review_views.audit_log, name="audit_log"),
    path("projects/<int:project_id>/datasets/", dataset_views.datasets_list, name="datasets_list"),
    path("projects/<int:project_id>/datasets/new/", dataset_views.dataset_new, name="dataset_new"),
    path(
        "projects/<int:project_id>/datasets/<int:version_id>/",
        dataset_views.dataset_detail,
        name="dataset_detail",
    ),
    path(
        "projects/<int:project_id>/datasets/<int:version_id>/export/",
        dataset_views.dataset_export,
        name="dataset_export",
    ),
]

# The go/no-go report (issue 6) ------------------------------------------------------------------
from projects import report_views  # noqa: E402

urlpatterns += [
    path("projects/<int:project_id>/report/", report_views.report, name="report"),
    path(
        "projects/<int:project_id>/report/settings/",
        report_views.report_settings,
        name="report_settings",
    ),
    path(
        "projects/<int:project_id>/report/break-even/",
        report_views.report_break_even,
        name="report_break_even",
    ),
    path("projects/<int:project_id>/report/share/", report_views.report_share, name="report_share"),
    path("share/reports/<str:share_token>/", report_views.shared_report, name="shared_report"),
    path(
        "share/reports/<str:share_token>/break-even/",
        report_views.shared_break_even,
        name="shared_break_even",
    ),
]
