from django.apps import AppConfig


class FinetunesConfig(AppConfig):
    name = "finetunes"
    verbose_name = "Fine-tunes and students"
