from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("media/<str:name>", views.media, name="media"),
    path("stream/<str:name>", views.stream, name="stream"),
]
