from django.apps import AppConfig


class DatasetVersionsConfig(AppConfig):
    name = "dataset_versions"
    verbose_name = "Frozen dataset versions"
