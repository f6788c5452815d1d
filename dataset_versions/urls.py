from django.urls import path

from dataset_versions import views

app_name = "dataset_versions"

urlpatterns = [
    path("projects/<int:project_id>/datasets/", views.datasets_list, name="datasets_list"),
    path("projects/<int:project_id>/datasets/new/", views.dataset_new, name="dataset_new"),
    path(
        "projects/<int:project_id>/datasets/<int:version_id>/",
        views.dataset_detail,
        name="dataset_detail",
    ),
    path(
        "projects/<int:project_id>/datasets/<int:version_id>/export/",
        views.dataset_export,
        name="dataset_export",
    ),
]
