"""Reads of the serving app: a team's served models, the one a token may call, and the
"measured in serving" figures (recomputable from the request log)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from finetunes.models import StudentKind, StudentModel
from projects.models import Project
from serving.models import ServedModel, ServingRequest
from teams.api_tokens import AuthCache, auth_generation
from teams.models import Team

# Throughput is the busiest stretch (up to this long) of completed requests per second: the log
# spans idle hours too, so requests over the whole span would say more about traffic than about
# the server.
THROUGHPUT_WINDOW_S = 10


def served_models_for_team(*, team: Team) -> QuerySet[ServedModel]:
    return ServedModel.objects.filter(team=team).select_related("student", "project", "served_by")


def students_to_serve(*, team: Team) -> QuerySet[StudentModel]:
    return (
        StudentModel.objects.filter(team=team, kind=StudentKind.DISTILLED, project__isnull=False)
        .select_related("project", "serving")
        .order_by("-created_at", "-id")
    )


# Served models found per process, kept like the token users of teams/api_tokens.py (forgotten
# on any change to a served model, token, membership, user or team): a warm request of the
# serving process then reads no row at all, so its threads need no database connection while
# they wait for the engine.
_SERVED_CACHE: AuthCache[tuple[int, str], ServedModel] = AuthCache()


def served_model_for_token(*, team_id: int, slug: str) -> ServedModel | None:
    """The active served model ``slug`` of the token's team (None: unknown, stopped or another
    team's: the caller cannot tell these apart)."""
    generation = auth_generation()
    found = _SERVED_CACHE.get((team_id, slug), generation)
    if found is not None:
        return found
    found = (
        ServedModel.objects.filter(team_id=team_id, slug=slug, active=True)
        .select_related("student", "project")
        .first()
    )
    if found is not None:
        _SERVED_CACHE.put((team_id, slug), generation, found)
    return found


def active_models_for_team(*, team_id: int) -> QuerySet[ServedModel]:
    return ServedModel.objects.filter(team_id=team_id, active=True).order_by("slug")


@dataclass(frozen=True)
class ServingFigures:
    n: int  # answered requests (HTTP 200)
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    requests_per_s: float | None  # busiest THROUGHPUT_WINDOW_S window
    first_at: datetime | None
    last_at: datetime | None
    engine: str

    @property
    def known(self) -> bool:
        return self.n > 0


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    values = sorted(values)
    pos = (len(values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def serving_figures(
    *, served: ServedModel | None = None, project: Project | None = None
) -> ServingFigures:
    rows = ServingRequest.objects.all()
    if served is not None:
        rows = rows.filter(served_model=served)
    if project is not None:
        rows = rows.filter(served_model__project=project)
    ok = list(rows.filter(status=200).values_list("latency_ms", "created_at", "engine"))
    errors = rows.exclude(status=200).count()
    if not ok:
        return ServingFigures(0, errors, None, None, None, None, None, "")
    latencies = [r[0] for r in ok]
    times = sorted(r[1].timestamp() for r in ok)
    best, start = 0.0, 0
    for end, t in enumerate(times):
        while t - times[start] >= THROUGHPUT_WINDOW_S:
            start += 1
        # Requests finished over the stretch they took (at least 1 s, so two requests a
        # millisecond apart are not "2,000 per second").
        best = max(best, (end - start + 1) / max(t - times[start], 1.0))
    return ServingFigures(
        n=len(ok),
        errors=errors,
        p50_ms=_percentile(latencies, 0.5),
        p95_ms=_percentile(latencies, 0.95),
        requests_per_s=best,
        first_at=min(r[1] for r in ok),
        last_at=max(r[1] for r in ok),
        engine=ok[-1][2],
    )


def recent_requests(*, served: ServedModel, limit: int = 50) -> QuerySet[ServingRequest]:
    return ServingRequest.objects.filter(served_model=served).order_by("-created_at", "-id")[:limit]
