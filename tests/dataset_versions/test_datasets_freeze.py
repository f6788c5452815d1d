"""Dataset versions: frozen from what reviewers approved, deterministic, leakage-checked,
immutable, with a stats page and exports that read back to the same rows."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.urls import reverse

from dataset_versions import services as dataset_services
from dataset_versions.models import DatasetItem, DatasetVersion, ImmutableError
from jobs.models import Job
from review.models import AuditEvent, ReviewDecision
from teachers.models import TeacherOutput
from tests.conftest import wait_until
from tests.factories import ProjectFactory
from tests.review.review_support import LABELS, decide, make_outputs
from worker import datasets

TICKETS = [
    "My card still has not arrived after two weeks",
    "I lost my card on the train yesterday",
    "Top up failed twice with my visa",
    "When will the new card be delivered to me",
    "Somebody stole my wallet with the card inside",
    "The top-up from my bank account did not work",
    "Card delivery is taking far too long",
    "Please freeze my card, it was stolen",
    "Why was my top up declined this morning",
    "Tracking number for my card shipment please",
    "I think I dropped my card at the shop",
    "Adding money to my account keeps failing",
]
ANSWERS = [LABELS[i % 3] for i in range(len(TICKETS))]
EDIT_TO = "top_up_failed"  # the second-to-last answer is lost_or_stolen_card


def reviewed_project(team, owner, client_for, n=12):  # type: ignore[no-untyped-def]
    project = ProjectFactory(team=team, created_by=owner, label_set=list(LABELS))
    outs = make_outputs(project, ANSWERS[:n], texts=TICKETS[:n])
    client = client_for(owner)
    for o in outs[:-2]:
        decide(client, o, "approve")
    decide(client, outs[-2], "edit", value=EDIT_TO)
    decide(client, outs[-1], "reject")
    return project, outs, client


def freeze(project, owner, name="v1", **kwargs):  # type: ignore[no-untyped-def]
    return dataset_services.dataset_version_create(
        project=project, user=owner, options=dataset_services.freeze_options(name=name, **kwargs)
    )


def splits_of(version: DatasetVersion) -> dict[str, str]:
    return dict(version.items.values_list("row_id", "split"))


def test_freeze_takes_approved_and_edited_outputs_and_records_the_decisions(
    team, owner, client_for
):  # type: ignore[no-untyped-def]
    project, outs, _ = reviewed_project(team, owner, client_for)
    version = freeze(project, owner)
    items = {i.row_id: i for i in version.items.all()}
    assert set(items) == {f"out-{o.pk}" for o in outs[:-1]}  # the rejected one is left out
    edited = items[f"out-{outs[-2].pk}"]
    assert edited.output == EDIT_TO and edited.source == "teacher_edited"
    assert edited.inputs == {"text": TICKETS[len(TICKETS) - 2]}
    decision = ReviewDecision.objects.get(output=outs[-2])
    assert edited.decision_ids == [decision.pk]
    assert version.decision_count == len(outs) - 1
    assert sum(version.stats["counts"].values()) == version.row_count == len(outs) - 1
    assert re.fullmatch(r"[0-9a-f]{64}", version.content_hash)
    event = AuditEvent.objects.get(action="freeze")
    assert event.dataset_version == version and event.after["content_hash"] == version.content_hash


def test_freeze_is_deterministic(team, owner, client_for):  # type: ignore[no-untyped-def]
    project, _, client = reviewed_project(team, owner, client_for)
    first = freeze(project, owner, name="a", seed=7)
    second = freeze(project, owner, name="b", seed=7)
    assert first.content_hash == second.content_hash
    assert splits_of(first) == splits_of(second)
    other_seed = freeze(project, owner, name="c", seed=8)
    assert other_seed.content_hash != first.content_hash
    assert set(splits_of(other_seed)) == set(splits_of(first))
    # The stats page says when two versions are identical.
    page = client.get(reverse("dataset_versions:dataset_detail", args=[project.pk, second.pk]))
    assert "identical to a" in page.content.decode()


def test_a_version_never_changes(team, owner, client_for):  # type: ignore[no-untyped-def]
    project, outs, client = reviewed_project(team, owner, client_for)
    version = freeze(project, owner)
    before = list(version.items.order_by("id").values_list("row_id", "output", "split"))
    version.name = "renamed"
    with pytest.raises(ImmutableError):
        version.save()
    item = version.items.first()
    item.output = "top_up_failed"
    with pytest.raises(ImmutableError):
        item.save()
    # Later review work does not reach into the frozen version.
    decide(client, outs[0], "reject")
    decide(client, outs[-1], "approve")  # was rejected
    assert (
        list(
            DatasetItem.objects.filter(version=version)
            .order_by("id")
            .values_list("row_id", "output", "split")
        )
        == before
    )


def test_leakage_check_catches_a_planted_near_duplicate(team, owner):  # type: ignore[no-untyped-def]
    project = ProjectFactory(team=team, label_set=list(LABELS))
    texts = [f"Question {i}: what is the status of order {i * 7919}?" for i in range(30)]
    planted = "My card has not arrived yet and I have been waiting for two whole weeks now"
    near = "My card has not arrived yet and I have been waiting for two whole weeks now!!"
    paraphrase = "My card has still not arrived yet and I have been waiting for two whole weeks now"
    texts += [planted, near, paraphrase]
    outs = make_outputs(project, ["card_arrival"] * len(texts), texts=texts)
    TeacherOutput.objects.filter(pk__in=[o.pk for o in outs]).update(review_status="approved")
    ids = {f"out-{outs[-3].pk}", f"out-{outs[-2].pk}", f"out-{outs[-1].pk}"}

    grouped = freeze(project, owner, name="grouped", train=0.5, validation=0.0, test=0.5)
    assert len({s for r, s in splits_of(grouped).items() if r in ids}) == 1
    assert grouped.leakage["ok"] is True
    assert grouped.leakage["near_duplicate_groups_merged"] >= 1

    # Without grouping, some seed puts the paraphrase in another split: the report names it.
    for seed in range(40):
        version = freeze(
            project,
            owner,
            name=f"report-{seed}",
            seed=seed,
            train=0.5,
            validation=0.0,
            test=0.5,
            group_near_duplicates=False,
        )
        if len({s for r, s in splits_of(version).items() if r in ids}) > 1:
            break
    else:
        pytest.fail("no seed split the near-duplicates apart")
    assert version.leakage["ok"] is False
    named = {(n["row_a"], n["row_b"]) for n in version.leakage["near_duplicates"]}
    assert any({a, b} <= ids for a, b in named)


def download(client, version, fmt, split="all"):  # type: ignore[no-untyped-def]
    response = client.get(
        reverse("dataset_versions:dataset_export", args=[version.project_id, version.pk]),
        {"format": fmt, "split": split},
    )
    assert response.status_code == 200, response
    return b"".join(response.streaming_content).decode("utf-8")


def test_exports_round_trip(team, owner, client_for):  # type: ignore[no-untyped-def]
    project, _, client = reviewed_project(team, owner, client_for)
    version = freeze(project, owner)
    spec = project.task_spec()
    items = list(version.items.order_by("id"))

    chats = list(datasets.read_openai_chat_jsonl(io.StringIO(download(client, version, "openai"))))
    assert [m[-1]["content"] for m in chats] == [i.output for i in items]
    assert all(i.inputs["text"] in m[-2]["content"] for m, i in zip(chats, items, strict=True))

    train = [i for i in items if i.split == "train"]
    pc = list(
        datasets.read_prompt_completion_jsonl(io.StringIO(download(client, version, "hf", "train")))
    )
    assert [r["completion"][0]["content"] for r in pc] == [i.output for i in train]
    assert pc[0]["prompt"][-1]["role"] == "user"

    # The split files hold exactly the rows of their split, together the whole version.
    for fmt in ("openai", "hf"):
        whole = download(client, version, fmt).splitlines()
        parts = {s: download(client, version, fmt, s).splitlines() for s in datasets.SPLITS}
        assert sorted(whole) == sorted(line for lines in parts.values() for line in lines)
        for split, lines in parts.items():
            assert len(lines) == version.stats["counts"][split]

    rows = list(datasets.read_csv(spec, io.StringIO(download(client, version, "csv"), newline="")))
    assert [(r.row_id, r.split, r.output, dict(r.inputs)) for r in rows] == [
        (i.row_id, i.split, i.output, i.inputs) for i in items
    ]
    assert [list(r.decision_ids) for r in rows] == [i.decision_ids for i in items]


def test_csv_export_neutralises_formula_cells(team, owner, client_for):  # type: ignore[no-untyped-def]
    project = ProjectFactory(team=team, output_kind="text", label_set=[])
    texts = ['=HYPERLINK("http://evil.example","click")', "@SUM(A1:A9)", "\tTabbed", "plain"]
    answers = ["+1 555 0100 is the number", "-2 points", "=1+1", "ok"]
    outs = make_outputs(project, answers, texts=texts)
    TeacherOutput.objects.filter(pk__in=[o.pk for o in outs]).update(review_status="approved")
    version = freeze(project, owner)
    body = download(client_for(owner), version, "csv")
    lines = body.splitlines()
    for dangerous in ["'=HYPERLINK", "'@SUM", "'+1 555", "'-2 points", "'=1+1"]:
        assert dangerous in body
    assert not any(re.search(r'(^|,)"?[=+\-@]', line) for line in lines[1:])
    rows = list(datasets.read_csv(project.task_spec(), io.StringIO(body, newline="")))
    assert sorted(r.inputs["text"] for r in rows) == sorted(texts)
    assert sorted(r.output for r in rows) == sorted(answers)


def test_human_references_and_the_real_synthetic_ratio(team, owner):  # type: ignore[no-untyped-def]
    project = ProjectFactory(team=team, label_set=list(LABELS))
    refs = ["card_arrival", None, None, None, "top_up_failed", "lost_or_stolen_card", None, None]
    outs = make_outputs(project, ["card_arrival"] * 8, texts=TICKETS[:8], references=refs)
    TeacherOutput.objects.filter(pk__in=[o.pk for o in outs]).update(review_status="approved")
    without = freeze(project, owner, name="teacher-only")
    assert {i.source for i in without.items.all()} == {"teacher"}
    assert without.row_count == 8

    mixed = freeze(project, owner, name="mixed", include_references=True)
    sources = dict(mixed.items.values_list("row_id", "source"))
    # An input with a human reference is taught the reference, not the teacher's answer.
    assert sum(1 for s in sources.values() if s == "human_reference") == 3
    assert f"out-{outs[0].pk}" not in sources and f"ref-{outs[0].input_id}" in sources
    assert mixed.row_count == 8

    half = freeze(project, owner, name="half", include_references=True, real_ratio=0.5)
    counts = {"human_reference": 0, "teacher": 0}
    for source in half.items.values_list("source", flat=True):
        counts[source] += 1
    assert counts == {"human_reference": 3, "teacher": 3}
    assert half.stats["dropped_for_ratio"] == {"real": 0, "synthetic": 2}
    assert half.stats["real_share"] == 0.5


@pytest.mark.slow
def test_freezing_from_the_form_runs_as_a_job_and_shows_the_stats_page(
    team, owner, client_for, celery_worker
):  # type: ignore[no-untyped-def]
    project, _, client = reviewed_project(team, owner, client_for)
    response = client.post(
        reverse("dataset_versions:dataset_new", args=[project.pk]),
        {
            "name": "v1-intents",
            "seed": 3,
            "train": 0.8,
            "validation": 0.1,
            "test": 0.1,
            "stratify": "on",
            "group_near_duplicates": "on",
            "near_duplicate_threshold": 0.8,
        },
    )
    assert response.status_code == 302
    job = Job.objects.get(kind="dataset_freeze")
    wait_until(
        lambda: Job.objects.get(pk=job.pk).status in {"succeeded", "failed"},
        timeout=90,
        message="the freeze job",
    )
    job.refresh_from_db()
    assert job.status == "succeeded", job.error + "".join(celery_worker.log[-30:])
    version = DatasetVersion.objects.get(project=project, name="v1-intents")
    assert job.result["content_hash"] == version.content_hash
    job_page = client.get(reverse("jobs:job_detail", args=[job.pk])).content.decode()
    assert reverse("dataset_versions:dataset_detail", args=[project.pk, version.pk]) in job_page
    page = client.get(reverse("dataset_versions:dataset_detail", args=[project.pk, version.pk]))
    html = page.content.decode()
    assert version.content_hash in html
    assert 'id="chart-labels"' in html and 'id="chart-lengths"' in html
    assert "plotly-basic-4.1.1.min.js" in html
    charts = json.loads(
        re.search(r'id="dataset-charts" type="application/json">(.*?)</script>', html).group(1)
    )
    assert sum(sum(v) for v in charts["label_counts"].values()) == version.row_count
    assert (
        charts["labels"] == sorted(charts["labels"]) and "lost_or_stolen_card" in charts["labels"]
    )
    for split in ("train", "validation", "test"):
        assert re.search(rf'data-testid="count-{split}">{version.stats["counts"][split]}<', html)
    assert "No leakage" in html
    listing = client.get(
        reverse("dataset_versions:datasets_list", args=[project.pk])
    ).content.decode()
    assert "v1-intents" in listing


def test_freeze_form_refuses_bad_settings(team, owner, client_for):  # type: ignore[no-untyped-def]
    project, _, client = reviewed_project(team, owner, client_for, n=4)
    freeze(project, owner, name="taken")
    url = reverse("dataset_versions:dataset_new", args=[project.pk])
    base = {
        "seed": 0,
        "train": 0.8,
        "validation": 0.1,
        "test": 0.1,
        "near_duplicate_threshold": 0.8,
    }
    taken = client.post(url, {**base, "name": "taken"})
    assert "already has a version named" in taken.content.decode()
    shares = client.post(url, {**base, "name": "x", "train": 0.5})
    assert "must add up to 1" in shares.content.decode()
    empty_project = ProjectFactory(team=team)
    nothing = client.post(
        reverse("dataset_versions:dataset_new", args=[empty_project.pk]), {**base, "name": "x"}
    )
    assert "Nothing to freeze yet" in nothing.content.decode()
    assert not Job.objects.filter(kind="dataset_freeze").exists()


@pytest.mark.parametrize("role", ["reviewer", "viewer"])
def test_reviewers_and_viewers_read_versions_but_only_engineers_and_owners_freeze(
    team, owner, client_for, member_with_role, role
):  # type: ignore[no-untyped-def]
    project, _, _ = reviewed_project(team, owner, client_for, n=4)
    version = freeze(project, owner)
    client = client_for(member_with_role(role))
    assert (
        client.get(reverse("dataset_versions:datasets_list", args=[project.pk])).status_code == 200
    )
    assert (
        client.get(
            reverse("dataset_versions:dataset_detail", args=[project.pk, version.pk])
        ).status_code
        == 200
    )
    assert download(client, version, "openai")
    new = reverse("dataset_versions:dataset_new", args=[project.pk])
    assert client.get(new).status_code == 403
    assert (
        client.post(new, {"name": "mine", "train": 1, "validation": 0, "test": 0}).status_code
        == 403
    )
    engineer = client_for(member_with_role("engineer"))
    assert engineer.get(new).status_code == 200
    assert DatasetVersion.objects.count() == 1


def test_synthetic_inputs_stay_in_train_up_to_the_share_and_show_as_synthetic(
    team, owner, client_for
):  # type: ignore[no-untyped-def]
    from projects.models import InputRow

    project = ProjectFactory(team=team, created_by=owner, label_set=list(LABELS))
    real = make_outputs(project, ANSWERS, texts=TICKETS)
    written = [
        f"synthetic ticket {i}: {w} card {i * 11} question"
        for i, w in enumerate(
            ["blue", "red", "green", "amber", "violet", "teal", "grey", "pink", "gold", "navy"]
        )
    ]
    synthetic = make_outputs(project, [LABELS[i % 3] for i in range(10)], texts=written)
    InputRow.objects.filter(pk__in=[o.input_id for o in synthetic]).update(synthetic=True)
    TeacherOutput.objects.filter(project=project).update(review_status="approved")

    client = client_for(owner)
    queue = client.get(reverse("review:review_queue", args=[project.pk])).content.decode()
    shown = {int(pk) for pk in re.findall(r'data-output-id="(\d+)"', queue)}
    on_page = len(shown & {o.pk for o in synthetic})
    assert on_page and queue.count('data-testid="synthetic-badge"') == on_page

    version = freeze(project, owner, name="mixed", max_synthetic_train_share=0.25)
    items = list(version.items.all())
    flagged = [i for i in items if i.synthetic_input]
    train = [i for i in items if i.split == "train"]
    assert flagged and all(i.split == "train" for i in flagged)
    assert len(flagged) <= 0.25 * len(train)
    assert {i.teacher_output_id for i in flagged} <= {o.pk for o in synthetic}
    assert version.stats["synthetic_inputs"]["train"] == len(flagged)
    assert version.stats["dropped_synthetic_over_cap"] == 10 - len(flagged)
    assert len([i for i in items if not i.synthetic_input]) == len(real)

    page = client.get(
        reverse("dataset_versions:dataset_detail", args=[project.pk, version.pk])
    ).content.decode()
    assert 'data-testid="synthetic-inputs"' in page and "in train only (at most 25 % of it)" in page
    body = download(client, version, "csv")
    assert body.splitlines()[0].startswith("row_id,split,source,synthetic_input,")
    rows = list(datasets.read_csv(project.task_spec(), io.StringIO(body, newline="")))
    assert sum(r.synthetic_input for r in rows) == len(flagged)
