from django.urls import path

from gateway import views

app_name = "gateway"

urlpatterns = [
    path("projects/<int:project_id>/gateway/", views.gateway_page, name="gateway"),
    path("projects/<int:project_id>/gateway/policy/", views.policy_edit, name="policy_edit"),
]
