from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "serving"
    verbose_name = "Serving students (OpenAI-compatible endpoint)"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from serving.models import ServedModel
        from teams.signals import auth_changed_now_and_on_commit

        # Serving, stopping or changing a served model decides what a token may call: the
        # serving processes' cached lookups (serving.selectors) are forgotten at once.
        post_save.connect(
            auth_changed_now_and_on_commit, sender=ServedModel, dispatch_uid="served-model-auth"
        )
        post_delete.connect(
            auth_changed_now_and_on_commit,
            sender=ServedModel,
            dispatch_uid="served-model-auth-del",
        )
