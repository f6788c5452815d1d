"""The serving process, for real: ``manage.py serve`` on loopback, driven by the official
``openai`` SDK, serving the tiny test model as a distilled student of a project's task."""

from __future__ import annotations

import concurrent.futures
import math

import httpx
import openai
import pytest

from finetunes.models import StudentKind, StudentModel, StudentSource
from serving import services
from serving.models import ServedModel, ServingChange, ServingRequest
from teams.api_tokens import api_token_create, api_token_revoke
from tests.conftest import wait_until
from tests.factories import ProjectFactory
from tests.serving.serving_support import ServingProcess, tiny_student_folder

pytestmark = pytest.mark.django_db(transaction=True)

LABELS = ["card_arrival", "lost_or_stolen_card", "top_up_failed"]


def served_student(team, owner, *, kind="label", name="Ticket intents v1", **project):  # type: ignore[no-untyped-def]
    fields = {"output_kind": kind, "label_set": LABELS if kind == "label" else []}
    if kind == "json":
        fields["json_schema"] = {
            "type": "object",
            "properties": {"intent": {"type": "string"}},
            "required": ["intent"],
        }
    fields.update(project)
    proj = ProjectFactory(team=team, created_by=owner, name=f"{name} task", **fields)
    student = StudentModel.objects.create(
        team=team,
        name=name,
        kind=StudentKind.DISTILLED,
        source=StudentSource.LOCAL,
        path=tiny_student_folder(),
        project=proj,
    )
    return services.student_serve(student=student, user=owner)


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    procs: list[ServingProcess] = []

    def start(**env: str) -> ServingProcess:
        proc = ServingProcess(**env).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def token(team, user, scopes=("serve",), name="prod"):  # type: ignore[no-untyped-def]
    return api_token_create(team=team, user=user, name=name, scopes=list(scopes))


def test_label_answers_stream_models_and_the_request_log(team, owner, server):  # type: ignore[no-untyped-def]
    served = served_student(team, owner)
    assert served.slug == "ticket-intents-v1"
    assert ServingChange.objects.filter(served_model=served, action="serve", user=owner).exists()
    _, raw = token(team, owner)
    client = server().client(raw)

    assert [m.id for m in client.models.list()] == ["ticket-intents-v1"]

    reply = client.chat.completions.create(
        model="ticket-intents-v1",
        messages=[{"role": "user", "content": "my card was blocked"}],
        logprobs=True,
    )
    answer = reply.choices[0].message.content
    assert answer in LABELS  # constrained: the untrained model still answers a label
    confidence = reply.model_extra["distillery"]["confidence"]
    assert 0 < confidence <= 1
    (whole,) = reply.choices[0].logprobs.content  # one entry: the whole label
    assert whole.token == answer and math.exp(whole.logprob) == pytest.approx(confidence, rel=1e-3)
    assert reply.usage.prompt_tokens > 5 and reply.usage.completion_tokens >= 2

    # Without logprobs the label is answered as soon as it is decided: the same label, the
    # same usage, no confidence.
    plain = client.chat.completions.create(
        model="ticket-intents-v1", messages=[{"role": "user", "content": "my card was blocked"}]
    )
    assert plain.choices[0].message.content == answer
    assert plain.choices[0].logprobs is None and "distillery" not in (plain.model_extra or {})
    assert plain.usage.completion_tokens == reply.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="ticket-intents-v1",
            messages=[{"role": "user", "content": "my card was blocked"}],
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["distillery"]["confidence"] == pytest.approx(confidence, rel=1e-3)
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens

    rows = wait_until(
        lambda: (
            (r := list(ServingRequest.objects.filter(served_model=served))) and len(r) >= 3 and r
        ),
        20,
        message="the three requests in the log (it is written behind the answers)",
    )
    assert len(rows) == 3
    assert {r.status for r in rows} == {200} and {r.stream for r in rows} == {True, False}
    assert all(r.latency_ms > 0 and r.prompt_tokens > 5 for r in rows)
    assert all(r.input_text == "" for r in rows)  # off unless the team turns it on

    services.served_log_inputs_set(served=served, user=owner, log_inputs=True)
    client.chat.completions.create(
        model="ticket-intents-v1", messages=[{"role": "user", "content": "where is my card"}]
    )
    logged = wait_until(
        lambda: ServingRequest.objects.filter(served_model=served).exclude(input_text="").first(),
        20,
    )
    assert "where is my card" in logged.input_text and logged.output_text in LABELS


def test_errors_in_openai_shape_and_tokens_across_teams(team, owner, outsider, server):  # type: ignore[no-untyped-def]
    served_student(team, owner)
    other_team = outsider.memberships.get().team
    other = served_student(other_team, outsider, name="Other intents")
    tok, raw = token(team, owner)
    _, raw_read = token(team, owner, scopes=("read",), name="read-only")
    _, raw_other = token(other_team, outsider)
    proc = server()
    messages = [{"role": "user", "content": "my card was blocked"}]

    with pytest.raises(openai.AuthenticationError) as missing:
        proc.client("dst_not-a-token").chat.completions.create(
            model="ticket-intents-v1", messages=messages
        )
    assert missing.value.status_code == 401
    assert missing.value.body["code"] == "invalid_api_key"

    with pytest.raises(openai.PermissionDeniedError):
        proc.client(raw_read).chat.completions.create(model="ticket-intents-v1", messages=messages)

    client = proc.client(raw)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=messages)
    assert (
        unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"
    )

    # Team B's student, with team A's token: the same 404 as an unknown model.
    with pytest.raises(openai.NotFoundError) as foreign:
        client.chat.completions.create(model=other.slug, messages=messages)
    assert foreign.value.body["code"] == "model_not_found"
    assert [m.id for m in proc.client(raw_other).models.list()] == [other.slug]

    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model="ticket-intents-v1", messages=[{"role": "user", "content": "my card " * 400}]
        )
    assert "512 tokens" in too_long.value.body["message"]
    assert too_long.value.body["code"] == "context_length_exceeded"

    # The raw wire shape, as any non-SDK client sees it.
    response = httpx.post(
        proc.base_url + "/chat/completions", json={"model": "x", "messages": messages}, timeout=30
    )
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    api_token_revoke(token=tok, user=owner)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="ticket-intents-v1", messages=messages)

    services.served_stop(served=ServedModel.objects.get(team=team), user=owner)
    with pytest.raises(openai.NotFoundError):
        proc.client(raw_other).chat.completions.create(model="ticket-intents-v1", messages=messages)


def one_slot_text_student(team, owner, server, *, queue_wait_s):  # type: ignore[no-untyped-def]
    """A served text task on a serving process with one slot (transformers: a long answer
    holds it for a while) and the given wait for it; (served, raw token, process)."""
    served = served_student(
        team, owner, kind="text", name="Ticket replies", instruction_template="Reply to: {{ text }}"
    )
    _, raw = token(team, owner)
    proc = server(
        DISTILLERY_SERVE_ENGINE="transformers",
        DISTILLERY_SERVE_CAPACITY="1",
        DISTILLERY_SERVE_QUEUE_WAIT=queue_wait_s,
    )
    return served, raw, proc


def test_text_stream_disconnect_frees_the_slot_and_capacity_answers_503(team, owner, server):  # type: ignore[no-untyped-def]
    served, raw, proc = one_slot_text_student(team, owner, server, queue_wait_s="0.05")
    client = proc.client(raw)
    messages = [{"role": "user", "content": "the app is not working"}]

    pieces = list(
        client.chat.completions.create(
            model=served.slug, messages=messages, stream=True, max_tokens=12
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert text and pieces[-1].choices[0].finish_reason in ("stop", "length")

    # A client that goes away mid-stream: its slot comes back (logged as 499).
    with httpx.stream(
        "POST",
        proc.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {raw}"},
        json={"model": served.slug, "messages": messages, "stream": True, "max_tokens": 450},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    gone = wait_until(
        lambda: ServingRequest.objects.filter(served_model=served, status=499).first(), 30
    )
    assert gone.error_code == "client_closed"
    assert client.chat.completions.create(model=served.slug, messages=messages, max_tokens=4)

    # Beyond capacity (one slot, 50 ms of queueing): 503 with Retry-After, in OpenAI's shape.
    def call(_: int) -> httpx.Response:
        return httpx.post(
            proc.base_url + "/chat/completions",
            headers={"Authorization": f"Bearer {raw}"},
            json={"model": served.slug, "messages": messages, "max_tokens": 300},
            timeout=60,
        )

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(call, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 503, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"


def test_json_task_is_validated_and_retried_never_invalid(team, owner, server):  # type: ignore[no-untyped-def]
    """The untrained tiny model cannot write JSON: the endpoint says so instead of passing it on."""
    served = served_student(team, owner, kind="json", name="Ticket fields")
    _, raw = token(team, owner)
    client = server().client(raw)
    with pytest.raises(openai.APIStatusError) as invalid:
        client.chat.completions.create(
            model=served.slug, messages=[{"role": "user", "content": "my card"}], max_tokens=8
        )
    assert invalid.value.status_code == 502
    assert invalid.value.body["code"] == "schema_validation_failed"
    assert "3 attempts" in invalid.value.body["message"]


def test_only_a_writer_serves_and_a_page_shows_the_figures(
    team, owner, client_for, member_with_role
):  # type: ignore[no-untyped-def]
    served = served_student(team, owner)
    ServingRequest.objects.create(
        served_model=served, status=200, latency_ms=12.5, created_at=served.served_at
    )
    page = client_for(owner).get(f"/served/{served.pk}/")
    assert page.status_code == 200
    assert b"ticket-intents-v1" in page.content and b"p50 <strong>12.5 ms" in page.content
    viewer = member_with_role("viewer")
    response = client_for(viewer).post(f"/served/{served.pk}/stop/")
    assert response.status_code == 403
    assert ServedModel.objects.get(pk=served.pk).active


def test_waiting_requests_hold_no_database_connection(team, owner, server):  # type: ignore[no-untyped-def]
    """Each kept-alive client connection has its own server thread; a thread must not keep a
    database connection for it (a gateway with 64 connections to a slow student exhausted
    PostgreSQL's 100 before). Twelve clients, each with its own connection, all answered and
    still connected: the serving process holds at most its log writer's connection."""
    from django.db import connection

    served_student(team, owner)
    _, raw = token(team, owner)
    proc = server()
    clients = [
        httpx.Client(
            base_url=proc.base_url, headers={"Authorization": f"Bearer {raw}"}, timeout=120
        )
        for _ in range(12)
    ]
    body = {"model": "ticket-intents-v1", "messages": [{"role": "user", "content": "my card"}]}
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda c: c.post("/chat/completions", json=body), clients))
        assert [r.status_code for r in replies] == [200] * 12
        assert all(r.json()["choices"][0]["message"]["content"] in LABELS for r in replies)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            (others,) = cursor.fetchone()
        assert others <= 2, f"{others} database connections held for 12 idle client connections"
    finally:
        for c in clients:
            c.close()


def test_a_client_that_gives_up_while_queued_costs_the_engine_nothing(team, owner, server):  # type: ignore[no-untyped-def]
    """One slot, held by a long streamed answer; a second request arrives and its client hangs
    up at once (as a caller's timeout does). The server notices while it waits for the slot and
    never runs it: logged 499 with no completion tokens."""
    import json
    import socket
    from urllib.parse import urlsplit

    served, raw, proc = one_slot_text_student(team, owner, server, queue_wait_s="30")
    headers = {"Authorization": f"Bearer {raw}"}
    long = {
        "model": served.slug,
        "messages": [{"role": "user", "content": "the app is not working"}],
        "stream": True,
        "max_tokens": 450,
    }
    with httpx.stream(
        "POST", proc.base_url + "/chat/completions", headers=headers, json=long, timeout=60
    ) as holding:
        assert holding.status_code == 200
        lines = holding.iter_lines()
        next(lines)  # the long answer is running: it holds the only slot
        body = json.dumps({**long, "stream": False, "max_tokens": 8}).encode()
        url = urlsplit(proc.base_url)
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {raw}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        gone = wait_until(
            lambda: ServingRequest.objects.filter(served_model=served, stream=False).first(), 30
        )
        assert (gone.status, gone.error_code) == (499, "client_closed")
        assert gone.completion_tokens == 0  # never run
        text = "".join(lines)
    assert "[DONE]" in text  # the slot's holder finished normally
