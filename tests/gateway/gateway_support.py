"""A project wired for the gateway: a teacher on the loopback fake provider (the real openai SDK
calls it), a student leg on a second loopback OpenAI-compatible server that answers like the
serving process (label + ``distillery.confidence``), a served student row and a serve token."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from finetunes.models import StudentKind, StudentModel, StudentSource
from gateway import services
from serving import services as serving_services
from teachers import prices
from teams import services as team_services
from teams.models import Membership
from tests.fakes.provider_server import FakeAnswer, FakeProviderServer, FakeRequest
from tests.helpers.api import Api, token_for

TEACHER_KEY = "sk-gateway-teacher"
MODEL = "gpt-gateway"


def teacher_label(text: str) -> str:
    if "stolen" in text or "lost" in text:
        return "lost_or_stolen_card"
    if "top up" in text or "top-up" in text:
        return "top_up_failed"
    return "card_arrival"


def teacher_responder(request: FakeRequest) -> str:
    return teacher_label(request.last_user_text.split("ticket:")[-1].split("\n")[0])


def student_responder(request: FakeRequest) -> FakeAnswer:
    """Agrees with the teacher, confidently — except on tickets saying "unsure" (it guesses
    card_arrival at 0.4) and "wrong" (it answers top_up_failed, confidently)."""
    text = request.last_user_text.split("ticket:")[-1].split("\n")[0]
    if "unsure" in text:
        return FakeAnswer("card_arrival", extra_body={"distillery": {"confidence": 0.4}})
    if "wrong" in text:
        return FakeAnswer("top_up_failed", extra_body={"distillery": {"confidence": 0.95}})
    return FakeAnswer(teacher_label(text), extra_body={"distillery": {"confidence": 0.97}})


@dataclass
class Wired:
    project: Any
    owner: Any
    teacher: FakeProviderServer
    student: FakeProviderServer
    token: str
    api: Api

    def infer(self, inputs: Any, **body: Any) -> Any:
        return self.api.post(
            f"/api/v1/projects/{self.project.slug}/infer", {"inputs": inputs, **body}
        )

    def policy(self, **values: Any) -> None:
        services.policy_update(project=self.project, user=self.owner, values=values)


def wire(
    project: Any,
    owner: Any,
    teacher: FakeProviderServer,
    student: FakeProviderServer,
    settings: Any,
) -> Wired:
    team = project.team
    settings.GATEWAY_STUDENT_URL = student.openai_base_url
    credential = team_services.credential_create(
        team=team,
        user=owner,
        name="gateway teacher",
        provider="openai",
        api_key=TEACHER_KEY,
        base_url=teacher.openai_base_url,
        allow_private_network=True,
    )
    prices.price_entry_save(
        team=team,
        user=owner,
        model=MODEL,
        input_usd_per_mtok=Decimal("10"),
        output_usd_per_mtok=Decimal("30"),
    )
    student_row = StudentModel.objects.create(
        team=team,
        name="Ticket intents student",
        kind=StudentKind.DISTILLED,
        source=StudentSource.LOCAL,
        path="students/gateway-test",
        project=project,
    )
    served = serving_services.student_serve(student=student_row, user=owner)
    services.policy_update(
        project=project,
        user=owner,
        values={"credential": credential, "teacher_model": MODEL, "served_model": served},
    )
    token = token_for(Membership.objects.get(team=team, user=owner), scopes=("serve",))
    return Wired(project, owner, teacher, student, token, Api(token))


def flush() -> None:
    assert services.gateway_flush(timeout=30), "the write-behind queue did not drain"
