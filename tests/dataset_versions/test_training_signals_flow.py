"""Rationales and soft labels from the teacher to the fine-tune form: imported logs and task
outputs keep the reason apart from the answer, review shows and edits it, frozen versions carry
it and the teacher's label distribution (one-hot where a reviewer edited), and the fine-tune
form offers each option only where the version can feed it, saying why not otherwise."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from dataset_versions import services as dataset_services
from finetunes.models import FineTune
from jobs.storage import data_path
from projects.models import Project
from review.models import AuditEvent
from teachers.models import TeacherOutput
from tests.factories import ProjectFactory
from tests.finetunes.finetune_support import frozen_version, tiny_student
from tests.review.review_support import LABELS, decide, make_outputs
from worker.taskspec import build_messages

pytestmark = pytest.mark.django_db


@pytest.fixture
def labelled(team, owner):  # type: ignore[no-untyped-def]
    return ProjectFactory(team=team, created_by=owner, label_set=list(LABELS))


def upload(client, project, name: str, content: str):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("teachers:teacher_run_import", args=[project.pk]),
        {"file": SimpleUploadedFile(name, content.encode())},
    )


def test_imported_csv_and_logs_keep_the_rationale_apart_from_the_answer(
    labelled, owner, client_for
):  # type: ignore[no-untyped-def]
    csv_text = (
        "text,output,Rationale\n"
        "My card has not arrived,card_arrival,The card was ordered and is late.\n"
        "Top up did not work,top_up_failed,\n"
    )
    assert upload(client_for(owner), labelled, "logs.csv", csv_text).status_code == 302
    line = {
        "request": {"messages": build_messages(labelled.task_spec(), {"text": "Stolen card"})},
        "response": {"choices": [{"message": {"content": "lost_or_stolen_card"}}]},
        "rationale": "Someone took the card.",
    }
    assert upload(client_for(owner), labelled, "logs.jsonl", json.dumps(line)).status_code == 302
    found = {o.input.data["text"]: o for o in TeacherOutput.objects.select_related("input")}
    arrived = found["My card has not arrived"]
    assert arrived.parsed == "card_arrival" and not arrived.parse_error
    assert arrived.rationale == "The card was ordered and is late."
    assert found["Top up did not work"].rationale == ""
    assert found["Stolen card"].rationale == "Someone took the card."
    assert found["Stolen card"].parsed == "lost_or_stolen_card"


def test_a_task_asking_for_a_reason_splits_answer_and_reason(owner, client_for, team):  # type: ignore[no-untyped-def]
    project = ProjectFactory(team=team, created_by=owner, label_set=list(LABELS))
    client = client_for(owner)
    response = client.post(
        reverse("projects:task_edit", args=[project.pk]),
        {
            "input_fields": "text",
            "instruction_template": project.instruction_template,
            "output_kind": "label",
            "label_set": "\n".join(LABELS),
            "ask_rationale": "on",
        },
    )
    assert response.status_code == 302
    project = Project.objects.get(pk=project.pk)
    assert project.ask_rationale and project.task_spec().rationale
    csv_text = 'text,output\nMy card is late,"card_arrival\nReason: it was ordered weeks ago."\n'
    assert upload(client, project, "with-reasons.csv", csv_text).status_code == 302
    output = TeacherOutput.objects.get(project=project)
    # The answer is what is checked and reviewed; the reason is kept apart.
    assert output.parsed == "card_arrival" and not output.parse_error
    assert output.rationale == "it was ordered weeks ago."


def test_reviewers_see_and_edit_the_reason_and_it_is_audited(labelled, owner, client_for):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(labelled, ["card_arrival"])
    TeacherOutput.objects.filter(pk=output.pk).update(rationale="Because of the card.")
    client = client_for(owner)
    queue = client.get(reverse("review:review_queue", args=[labelled.pk])).content.decode()
    assert "Because of the card." in queue and 'data-testid="teacher-rationale"' in queue
    url = reverse("review:review_rationale", args=[labelled.pk, output.pk])
    card = client.post(
        url, {"rationale": "  The new card has not arrived.  "}, HTTP_X_REVIEW_FRAGMENT="1"
    )
    assert card.status_code == 200
    assert "The new card has not arrived." in card.content.decode()
    output.refresh_from_db()
    assert output.rationale == "The new card has not arrived."
    assert output.review_status == "unreviewed"  # the answer's review is its own decision
    event = AuditEvent.objects.get(output=output)
    assert event.before == {"rationale": "Because of the card."}
    assert event.after == {"rationale": "The new card has not arrived."}
    too_long = client.post(url, {"rationale": "x" * 5001}, HTTP_X_REVIEW_FRAGMENT="1")
    assert too_long.status_code == 400 and "at most 5,000 characters" in too_long.content.decode()


def test_a_version_carries_reasons_and_distributions_and_an_edit_is_one_hot(
    labelled, owner, client_for
):  # type: ignore[no-untyped-def]
    outs = make_outputs(
        labelled, ["card_arrival", "card_arrival", "top_up_failed"], texts=["a b", "c d", "e f"]
    )
    spread = {"card_arrival": 0.7, "lost_or_stolen_card": 0.3}
    for o in outs:
        TeacherOutput.objects.filter(pk=o.pk).update(
            rationale=f"reason {o.pk}", label_distribution=spread
        )
    client = client_for(owner)
    decide(client, outs[0], "approve")
    decide(client, outs[1], "edit", value="lost_or_stolen_card")
    decide(client, outs[2], "approve")  # its answer has no mass in the distribution
    version = dataset_services.dataset_version_create(
        project=labelled,
        user=owner,
        options=dataset_services.freeze_options(
            name="v1", train=1.0, validation=0.0, test=0.0, group_near_duplicates=False
        ),
    )
    items = {i.teacher_output_id: i for i in version.items.all()}
    assert {i.rationale for i in items.values()} == {f"reason {o.pk}" for o in outs}
    assert items[outs[0].pk].label_distribution == spread
    assert items[outs[1].pk].label_distribution is None  # a reviewer's edit: one-hot
    assert items[outs[2].pk].label_distribution is None  # the teacher never chose it
    export = data_path(version.files["hf:train"]).read_text().splitlines()
    records = {json.loads(line)["prompt"][-1]["content"]: json.loads(line) for line in export}
    first = next(r for r in records.values() if r["rationale"] == f"reason {outs[0].pk}")
    assert first["label_distribution"] == spread
    # The fine-tune reads both back from the frozen export.
    from finetunes.training_job import training_examples

    examples = {e.rationale: e for e in training_examples(version, "train")}
    assert examples[f"reason {outs[0].pk}"].soft_label == spread
    assert examples[f"reason {outs[1].pk}"].soft_label is None


def test_the_form_disables_what_the_version_cannot_feed_and_says_why(
    team, owner, client_for, tiny_model_dir
):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    base = tiny_student(team, tiny_model_dir)
    url = reverse("finetunes:finetune_new", args=[version.project_id, version.pk])
    page = client_for(owner).get(url).content.decode()
    assert "no training row carries the teacher&#x27;s distribution" in page
    assert "no training row carries a rationale" in page
    assert 'name="soft_label_weight"' in page and "disabled" in page
    # A crafted POST is not trusted: the service refuses it with the field named.
    from finetunes import services as finetune_services

    with pytest.raises(Exception) as caught:
        finetune_services.fine_tune_start(
            project=version.project,
            version=version,
            user=owner,
            settings=finetune_services.FineTuneSettings(
                student=base, preset="quick", hyperparameters={"soft_label_weight": 0.5}
            ),
        )
    assert "soft_label_weight" in caught.value.message_dict  # type: ignore[attr-defined]
    assert FineTune.objects.count() == 0


def test_the_form_offers_both_when_rows_carry_them_and_the_job_gets_them(
    team, owner, client_for, tiny_model_dir
):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    version.items.filter(split="train").update(
        rationale="because", label_distribution={"card_arrival": 0.8, "top_up_failed": 0.2}
    )
    base = tiny_student(team, tiny_model_dir)
    url = reverse("finetunes:finetune_new", args=[version.project_id, version.pk])
    page = client_for(owner).get(url).content.decode()
    assert "carry the teacher&#x27;s distribution" in page and "Unavailable" not in page
    response = client_for(owner).post(
        url,
        {
            "student": str(base.pk),
            "method": "lora",
            "preset": "quick",
            "rationale_training": "second_task",
            "soft_label_weight": "0.5",
            "soft_label_temperature": "2",
        },
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    fine_tune = FineTune.objects.get()
    assert fine_tune.hyperparameters["rationale_training"] == "second_task"
    assert fine_tune.hyperparameters["soft_label_weight"] == 0.5
    spec = finetune_services_train_spec(fine_tune)
    assert spec.soft_label_weight == 0.5 and spec.rationale_training == "second_task"
    bad = client_for(owner).post(
        url,
        {"student": str(base.pk), "method": "lora", "preset": "quick", "soft_label_weight": "3"},
    )
    assert (
        bad.status_code == 400 and 'data-testid="error-soft_label_weight"' in bad.content.decode()
    )


def finetune_services_train_spec(fine_tune):  # type: ignore[no-untyped-def]
    from finetunes import services as finetune_services

    return finetune_services._train_spec(fine_tune)
