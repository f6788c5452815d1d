from django.urls import path

from review import views

app_name = "review"

urlpatterns = [
    path("projects/<int:project_id>/review/", views.review_queue, name="review_queue"),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/",
        views.review_item,
        name="review_item",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/decide/",
        views.review_decide,
        name="review_decide",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/comment/",
        views.review_comment,
        name="review_comment",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/rationale/",
        views.review_rationale,
        name="review_rationale",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/identical/",
        views.review_identical,
        name="review_identical",
    ),
    path(
        "projects/<int:project_id>/review/outputs/<int:output_id>/resolve/",
        views.review_resolve,
        name="review_resolve",
    ),
    path("projects/<int:project_id>/review/undo/", views.review_undo, name="review_undo"),
    path("projects/<int:project_id>/review/bulk/", views.review_bulk, name="review_bulk"),
    path(
        "projects/<int:project_id>/review/automation/",
        views.review_automation,
        name="review_automation",
    ),
    path(
        "projects/<int:project_id>/review/rules/",
        views.review_rule_create,
        name="review_rule_create",
    ),
    path(
        "projects/<int:project_id>/review/rules/apply/",
        views.review_rules_apply,
        name="review_rules_apply",
    ),
    path(
        "projects/<int:project_id>/review/rules/<int:rule_id>/delete/",
        views.review_rule_delete,
        name="review_rule_delete",
    ),
    path("projects/<int:project_id>/review/assign/", views.review_assign, name="review_assign"),
    path(
        "projects/<int:project_id>/review/agreement/",
        views.review_agreement,
        name="review_agreement",
    ),
    path("projects/<int:project_id>/audit/", views.audit_log, name="audit_log"),
]
