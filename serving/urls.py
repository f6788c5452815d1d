from django.urls import path

from serving import views

app_name = "serving"

urlpatterns = [
    path("teams/<int:team_id>/serving/", views.serving_page, name="serving"),
    path("students/<int:student_id>/serve/", views.student_serve, name="student_serve"),
    path("served/<int:served_id>/", views.served_detail, name="served_detail"),
    path("served/<int:served_id>/stop/", views.served_stop, name="served_stop"),
    path("served/<int:served_id>/settings/", views.served_settings, name="served_settings"),
]
