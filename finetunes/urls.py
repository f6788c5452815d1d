from django.urls import path

from finetunes import views

app_name = "finetunes"

urlpatterns = [
    path(
        "projects/<int:project_id>/datasets/<int:version_id>/fine-tune/",
        views.finetune_new,
        name="finetune_new",
    ),
    path("projects/<int:project_id>/fine-tunes/", views.finetune_list, name="finetunes"),
    path("fine-tunes/<int:finetune_id>/", views.finetune_detail, name="finetune_detail"),
    path("fine-tunes/<int:finetune_id>/status/", views.finetune_status, name="finetune_status"),
    path("fine-tunes/<int:finetune_id>/points.json", views.finetune_points, name="finetune_points"),
    path("fine-tunes/<int:finetune_id>/cancel/", views.finetune_cancel, name="finetune_cancel"),
    path("fine-tunes/<int:finetune_id>/resume/", views.finetune_resume, name="finetune_resume"),
    path("teams/<int:team_id>/students/", views.students, name="students"),
    path("students/<int:student_id>/", views.student_detail, name="student_detail"),
    path(
        "students/<int:student_id>/download/<slug:artifact>/",
        views.student_download,
        name="student_download",
    ),
    path(
        "students/<int:student_id>/download/<slug:artifact>/<str:filename>",
        views.student_file,
        name="student_file",
    ),
    path("students/<int:student_id>/exports/", views.export_start, name="export_start"),
    path("exports/<int:export_id>/", views.export_detail, name="export_detail"),
    path("exports/<int:export_id>/status/", views.export_status, name="export_status"),
    path("exports/<int:export_id>/cancel/", views.export_cancel, name="export_cancel"),
    path("exports/<int:export_id>/files/<path:name>", views.export_file, name="export_file"),
]
