from django.urls import path

from . import views

app_name = "reports"

urlpatterns = [
    path("", views.my_jobs, name="mine"),
    path("rooms/<str:label>/export/", views.export, name="export"),
    path("rooms/<str:label>/export/new/", views.export_form, name="export_form"),
    path("rooms/<str:label>/insights/", views.insights, name="insights"),
    path("<int:pk>/", views.job, name="job"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
    path("<int:pk>/download/", views.download, name="download"),
    path("<int:pk>/charts/<slug:name>.png", views.chart, name="chart"),
]
