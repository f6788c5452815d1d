from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from distillery.api import api, api_not_found
from distillery.errors import favicon
from distillery.outages import healthz

handler403 = "distillery.errors.permission_denied"

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", api_not_found, name="api_not_found"),
    path("favicon.ico", favicon, name="favicon"),
    path("", include("teams.urls")),
    path("", include("jobs.urls")),
    path("", include("projects.urls")),
    path("", include("teachers.urls")),
    path("", include("review.urls")),
    path("", include("dataset_versions.urls")),
    path("", include("finetunes.urls")),
    path("", include("evaluations.urls")),
    path("", include("serving.urls")),
    path("", include("gateway.urls")),
    path("", include("reports.urls")),
]
