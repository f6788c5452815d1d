"""Learning curves: a fine-tune's recipe retrained on nested subsets inside an evaluation job
(through a real worker), and what the evaluation page and the go/no-go report say about how
much reviewed data is enough — with known numbers from fixed answers, and plainly when the
curve is too thin to forecast."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from evaluations import services as es
from evaluations.learning_curve import curve_for, curve_scores, reviewed_rows
from evaluations.models import Evaluation
from finetunes.models import FineTune
from finetunes.services import nested_subset
from jobs import storage
from jobs.models import Job, JobStatus
from reports.models import ReportSettings
from tests.conftest import wait_until
from tests.evaluations.curve_support import finished_curve
from tests.finetunes.finetune_support import WORKER_ENV, frozen_version, start, tiny_student

pytestmark = pytest.mark.django_db(transaction=True)

# quality(n) = 0.9 - 3 n^-0.5 at 100/200/400/800 rows, on 200 test examples: 60/69/75/79 %.
SIZES = [100, 200, 400, 800]
RIGHT = [120, 138, 150, 159]


def test_a_curve_counts_the_reviewed_rows_a_fine_tune_was_given(team, owner, tiny_model_dir):  # type: ignore[no-untyped-def]
    # Without a validation split a fine-tune trains on nine tenths of its rows (the rest watch
    # for over-fitting); the team reviewed all of them, and the curve speaks of reviewed rows.
    version = frozen_version(team, owner, n=30)
    train_rows = version.stats["counts"]["train"]
    base = tiny_student(team, tiny_model_dir)

    def fine_tune(n_train: int, limit: int | None) -> FineTune:
        return FineTune.objects.create(
            job=Job.objects.create(team=team, project=version.project, kind="fine_tune"),
            project=version.project,
            dataset_version=version,
            base_model=base,
            method="lora",
            n_train=n_train,
            train_limit=limit,
        )

    assert reviewed_rows(fine_tune(train_rows - 2, None)) == train_rows
    assert reviewed_rows(fine_tune(9, 10)) == 10


def page_text(client, url: str) -> str:  # type: ignore[no-untyped-def]
    response = client.get(url)
    assert response.status_code == 200
    return html.unescape(re.sub(r"\s+", " ", response.content.decode()))


def chart_data(html: str) -> dict:  # type: ignore[type-arg]
    found = re.search(r'<script id="curve-data" type="application/json">(.*?)</script>', html)
    assert found, "the chart's data is on the page"
    return json.loads(found.group(1))


def test_the_page_and_the_report_say_what_more_reviewed_data_buys(team, owner, client_for):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    project = version.project
    evaluation = finished_curve(project, owner, version, sizes=SIZES, right=RIGHT, n_test=200)
    client = client_for(owner)
    html = page_text(client, reverse("evaluations:evaluation", args=[evaluation.pk]))
    assert (
        "Trained on 100, 200, 400, 800 reviewed examples, the student reached 60 %, 69 %, 75 %, "
        "80 % of the teacher's quality on the same 200 test examples." in html
    )
    forecast = re.search(
        r"At 1,600 reviewed examples \(twice today's 800\) the student is expected to reach "
        r"(\d+) % of the teacher \(95 % interval (\d+)\u2013(\d+) %\)",
        html,
    )
    assert forecast, html[:3000]
    value, low, high = (int(g) for g in forecast.groups())
    assert low <= 82 <= high and 78 <= value <= 86  # the true curve gives 82.5 % at 1,600
    # The default target (95 %) is near where this curve levels off (90 %), and 200 test
    # examples cannot tell which side: the page says it is uncertain rather than guess.
    assert "The curve levels off at about 89 % of the teacher" in html
    assert "Whether more data reaches the 95 % target is uncertain" in html
    data = chart_data(html)
    assert data["measured"]["x"] == SIZES
    assert data["measured"]["y"] == [60.0, 69.0, 75.0, 79.5]
    assert data["fit"]["x"][0] < SIZES[0] and data["fit"]["x"][-1] > SIZES[-1]
    assert all(
        lo <= y <= hi
        for lo, y, hi in zip(data["fit"]["low"], data["fit"]["y"], data["fit"]["high"], strict=True)
    )
    assert 'data-testid="curve-chart"' in html and "js/learning_curve.js" in html
    assert "plotly-basic" in html

    # The report reads the same curve against the project's own target.
    settings = ReportSettings.objects.create(project=project, quality_target_percent=82)
    report = page_text(client, reverse("reports:report", args=[project.pk]))
    assert "How much reviewed data is enough?" in report
    assert "82 % target" in report and "95 % target" not in report
    needed = re.search(
        r"The 82 % target needs about ([\d,]+) reviewed examples \(95 % interval ([\d,]+)\u2013([\d,]+)\)"
        r": about ([\d,]+) more than today's 800\.",
        report,
    )
    assert needed, report[report.find("How much") :][:1500]
    n, low, high, more = (int(g.replace(",", "")) for g in needed.groups())
    assert low <= 1406 <= high and 900 <= n <= 2500 and more == n - 800  # truly 1,406
    assert "js/learning_curve.js" in report
    # Near the plateau the same rows cannot say: the report says so instead of a number.
    settings.quality_target_percent = 85
    settings.save()
    report = page_text(client, reverse("reports:report", args=[project.pk]))
    assert "By the fitted curve the 85 % target needs about" in report
    assert "but that is uncertain" in report
    assert "js/learning_curve.js" in report


def test_every_number_is_recomputed_from_the_stored_rows(team, owner):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    evaluation = finished_curve(
        version.project, owner, version, sizes=SIZES, right=RIGHT, n_test=200
    )
    scores = curve_scores(evaluation=evaluation)
    assert scores is not None
    assert scores.sizes == SIZES
    assert [sum(row) for row in scores.matrix] == RIGHT
    first, again = curve_for(evaluation=evaluation), curve_for(evaluation=evaluation)
    assert first is not None and again is not None
    assert first.sentences == again.sentences and first.chart == again.chart


def test_a_target_above_a_firm_plateau_points_to_a_bigger_student(team, owner):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    evaluation = finished_curve(
        version.project, owner, version, sizes=SIZES, right=[10 * k for k in RIGHT], n_test=2000
    )
    curve = curve_for(evaluation=evaluation, target_percent=95)
    assert curve is not None
    assert (
        "below the 95 % target: more reviewed data is unlikely to reach it" in curve.sentences[-1]
    )
    assert "A bigger student is the lever." in curve.sentences[-1]
    reachable = curve_for(evaluation=evaluation, target_percent=75)
    assert reachable is not None
    assert "The student already meets the 75 % target." in reachable.sentences[-1]


def test_too_few_training_sizes_make_no_forecast_and_say_so(team, owner, client_for):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    evaluation = finished_curve(
        version.project, owner, version, sizes=[100, 800], right=[120, 159], n_test=200
    )
    html = page_text(client_for(owner), reverse("evaluations:evaluation", args=[evaluation.pk]))
    assert "this one has 2, so it makes no forecast" in html
    assert "expected to reach" not in html
    assert "fit" not in chart_data(html)


def test_three_sizes_forecast_with_the_caveat_that_the_curve_passes_through_them(team, owner):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    evaluation = finished_curve(
        version.project, owner, version, sizes=[200, 400, 800], right=[138, 150, 159], n_test=200
    )
    curve = curve_for(evaluation=evaluation)
    assert curve is not None and curve.fitted
    assert "passes through every point" in curve.caveat
    assert "not whether growth keeps this shape" in curve.caveat


def test_nested_subsets_are_seeded_and_contain_each_other() -> None:
    rows = list(range(100))
    small, large = nested_subset(rows, 25, 3), nested_subset(rows, 50, 3)  # type: ignore[arg-type]
    assert len(small) == 25 and len(large) == 50
    assert set(small) <= set(large)
    assert nested_subset(rows, 25, 3) == small  # type: ignore[arg-type]
    assert nested_subset(rows, 25, 4) != small  # type: ignore[arg-type]
    assert nested_subset(rows, None, 3) == rows  # type: ignore[arg-type]


def test_bad_choices_are_refused_by_field(team, owner, client_for, tiny_model_dir):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner, n=60)
    unfinished = start(version, owner, tiny_student(team, tiny_model_dir), max_steps=2)

    def refused(field: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
        with pytest.raises(ValidationError) as caught:
            es.learning_curve_start(
                project=version.project,
                user=owner,
                teacher=es.TeacherChoice(),
                **{"fine_tune": unfinished, **kwargs},
            )
        return " ".join(caught.value.message_dict[field])

    assert "finished" in refused("fine_tune")
    FineTune.objects.filter(pk=unfinished.pk).update(n_train=42)
    unfinished.job.status = JobStatus.SUCCEEDED
    unfinished.job.save()
    unfinished.result_model = unfinished.base_model
    unfinished.save()
    assert "between 1 and 99" in refused("percents", percents=[50, 100])
    assert "too few to train on" in refused("percents", percents=[10, 50])
    assert "at least two smaller sizes" in refused("percents", percents=[50])
    assert Evaluation.objects.count() == 0

    client = client_for(owner)
    url = reverse("evaluations:learning_curve_new", args=[version.project.pk])
    assert "How much reviewed data is enough?" in page_text(client, url)
    response = client.post(
        url,
        {
            "fine_tune": unfinished.pk,
            "teacher_source": "stored",
            "percents": "half",
            "seed": 0,
            "batch_size": 8,
        },
    )
    assert response.status_code == 400
    assert "whole percentages" in response.content.decode()


@pytest.mark.slow
def test_a_learning_curve_trains_nested_subsets_and_forecasts_through_a_real_worker(
    worker_factory, team, owner, tiny_model_dir, client_for
):  # type: ignore[no-untyped-def]
    worker = worker_factory(queues="gpu", concurrency=1, extra_env=WORKER_ENV)
    version = frozen_version(team, owner, n=60)  # 42 training rows
    base = tiny_student(team, tiny_model_dir)
    parent = start(version, owner, base, max_steps=3)
    wait_until(
        lambda: FineTune.objects.get(pk=parent.pk).job.is_terminal,
        timeout=240,
        message="the fine-tune to end",
    )
    parent = FineTune.objects.select_related("job", "result_model").get(pk=parent.pk)
    assert parent.job.status == JobStatus.SUCCEEDED, parent.job.error
    assert parent.n_train == 42

    client = client_for(owner)
    response = client.post(
        reverse("evaluations:learning_curve_new", args=[version.project.pk]),
        {
            "fine_tune": parent.pk,
            "teacher_source": "stored",
            "percents": "25, 50",
            "seed": 0,
            "batch_size": 8,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    evaluation = Evaluation.objects.get(kind="curve")
    assert evaluation.job.queue == "gpu"
    wait_until(
        lambda: Evaluation.objects.get(pk=evaluation.pk).job.is_terminal,
        timeout=420,
        message="the learning curve to finish",
    )
    evaluation = Evaluation.objects.select_related("job").get(pk=evaluation.pk)
    assert evaluation.job.status == JobStatus.SUCCEEDED, evaluation.job.error + "".join(
        worker.log[-30:]
    )

    # Two new fine-tunes, the same recipe on 10 and 21 of the 42 rows, nested; each ran inline.
    subsets = list(FineTune.objects.exclude(pk=parent.pk).order_by("train_limit"))
    assert [f.train_limit for f in subsets] == [10, 21]
    assert all(f.job.status == JobStatus.SUCCEEDED and f.result_model for f in subsets)
    assert all(f.hyperparameters == parent.hyperparameters for f in subsets)

    def trained_on(fine_tune: FineTune) -> set[str]:
        lines = (storage.data_path(fine_tune.output_dir) / "train.jsonl").read_text().splitlines()
        return {json.dumps(json.loads(line)["messages"]) for line in lines}

    small, large = (trained_on(f) for f in subsets)
    assert small <= large and len(small) < len(large)

    # Every student answered the same test examples; the curve has its three points.
    n_test = evaluation.examples.count()
    students = evaluation.candidates.filter(role="distilled")
    assert students.count() == 3
    assert all(c.outputs.count() == n_test for c in students)
    curve = curve_for(evaluation=evaluation)
    assert curve is not None and [p.n for p in curve.points] == [10, 21, 42]
    html = page_text(client, reverse("evaluations:evaluation", args=[evaluation.pk]))
    assert "Trained on 10, 21, 42 reviewed examples" in html
    assert 'data-testid="curve-chart"' in html
    assert "passes through every point" in html
    assert Path(storage.data_path(subsets[0].output_dir)).is_dir()
