from django.urls import path

from reports import dashboard, views

app_name = "reports"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("projects/<int:project_id>/report/", views.report, name="report"),
    path(
        "projects/<int:project_id>/report/settings/", views.report_settings, name="report_settings"
    ),
    path(
        "projects/<int:project_id>/report/break-even/",
        views.report_break_even,
        name="report_break_even",
    ),
    path("projects/<int:project_id>/report/share/", views.report_share, name="report_share"),
    path("share/reports/<str:share_token>/", views.shared_report, name="shared_report"),
    path(
        "share/reports/<str:share_token>/break-even/",
        views.shared_break_even,
        name="shared_break_even",
    ),
]
