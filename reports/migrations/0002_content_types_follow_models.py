"""Content types (and so permissions and admin history) follow the models to their new apps."""

from django.db import migrations

MOVED = {
    "projects": {
        "teams": ["team", "membership", "invite", "providercredential"],
        "teachers": ["teacheroutput", "outputflag"],
        "review": [
            "reviewrule", "reviewdecision", "reviewcomment", "reviewassignment",
            "reviewsettings", "auditevent",
        ],
        "dataset_versions": ["datasetversion", "datasetitem"],
    },
    "jobs": {
        "teachers": ["priceentry", "teacherrun", "ledgerentry", "cachedresponse"],
        "evaluations": ["evaluation", "evalcandidate", "evalexample", "evaloutput", "evalvote"],
        "reports": ["reportsettings"],
        "finetunes": ["studentmodel", "finetune", "trainingpoint"],
    },
}


def relabel(apps, schema_editor, *, forward=True):
    content_type = apps.get_model("contenttypes", "ContentType")
    for old, targets in MOVED.items():
        for new, names in targets.items():
            src, dst = (old, new) if forward else (new, old)
            for name in names:
                if content_type.objects.filter(app_label=dst, model=name).exists():
                    continue
                content_type.objects.filter(app_label=src, model=name).update(app_label=dst)


def forwards(apps, schema_editor):
    relabel(apps, schema_editor, forward=True)


def backwards(apps, schema_editor):
    relabel(apps, schema_editor, forward=False)


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("projects", "0006_models_move_to_journey_apps"),
        ("jobs", "0011_teacher_run_moves_to_teachers"),
        ("teams", "0001_initial"),
        ("teachers", "0001_initial"),
        ("review", "0002_initial"),
        ("dataset_versions", "0001_initial"),
        ("finetunes", "0001_initial"),
        ("evaluations", "0003_initial"),
        ("reports", "0001_initial"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
