from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "teams"
    verbose_name = "Teams, members, roles and provider credentials"

    def ready(self) -> None:
        from teams import signals

        signals.connect()
