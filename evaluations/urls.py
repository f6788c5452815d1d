from django.urls import path

from evaluations import views

app_name = "evaluations"

urlpatterns = [
    path("projects/<int:project_id>/evaluations/", views.evaluation_list, name="evaluations"),
    path("projects/<int:project_id>/evaluations/new/", views.evaluation_new, name="evaluation_new"),
    path(
        "projects/<int:project_id>/evaluations/learning-curve/",
        views.learning_curve_new,
        name="learning_curve_new",
    ),
    path("projects/<int:project_id>/experiment/", views.experiment, name="experiment"),
    path("evaluations/<int:evaluation_id>/", views.evaluation_detail, name="evaluation"),
    path(
        "evaluations/<int:evaluation_id>/cancel/",
        views.evaluation_cancel,
        name="evaluation_cancel",
    ),
    path(
        "evaluations/<int:evaluation_id>/compare/",
        views.evaluation_compare,
        name="evaluation_compare",
    ),
    path(
        "evaluations/<int:evaluation_id>/examples/<int:example_id>/vote/",
        views.evaluation_vote,
        name="evaluation_vote",
    ),
    path(
        "evaluations/<int:evaluation_id>/votes/dpo.jsonl",
        views.evaluation_dpo,
        name="evaluation_dpo",
    ),
]
