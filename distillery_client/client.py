"""A small Python client for Distillery's REST API (/api/v1/); the `distillery` CLI is built on it.

No Django here: it installs with the package and runs anywhere Python and httpx do::

    from distillery_client import Distillery

    d = Distillery("https://distillery.example.com", token="dst_…")
    for project in d.paginate("/projects"):
        print(project["slug"])
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from distillery_client.gateway import InferResult

API_PREFIX = "/api/v1"
#: Job statuses after which a job never changes again.
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
#: Where a job waits for a person (a teacher run paused by its budget cap): waiting ends there.
STOPPED = frozenset({"paused"})


class ApiError(Exception):
    """An error answered by the API: its status, its ``detail`` and the named ``errors``."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None):
        self.status = status
        self.detail = detail
        self.errors = errors or []
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = [f"{self.detail} (HTTP {self.status})"]
        for error in self.errors:
            where = " ".join(
                part
                for part in (
                    f"row {error['row']}" if error.get("row") else "",
                    f"line {error['line']}" if error.get("line") else "",
                    f"field {error['field']}" if error.get("field") else "",
                )
                if part
            )
            lines.append(f"  {where + ': ' if where else ''}{error.get('message', '')}")
        return "\n".join(lines)


class JobFailed(Exception):
    def __init__(self, job: dict[str, Any]):
        self.job = job
        message = job.get("error") or job.get("message") or ""
        super().__init__(
            f"job {job.get('id')} {job.get('status')}{': ' + message if message else ''}"
        )


@dataclass
class Distillery:
    """The API at ``url`` (the site's root, e.g. http://127.0.0.1:8000) with a team token."""

    url: str
    token: str
    timeout: float = 60.0
    retries: int = 3

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers={"Authorization": f"Bearer {self.token}", "User-Agent": "distillery-cli"},
            timeout=self.timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Distillery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        idempotent: bool = True,
    ) -> Any:
        """The decoded JSON answer; raises ApiError for any error status. Writes carry an
        Idempotency-Key (a fresh one unless given), so retrying after a lost connection or a 429
        never starts anything twice."""
        headers = {}
        if method != "GET" and idempotent:
            headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        params = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(
                    method, path, json=json, params=params, files=files, data=data, headers=headers
                )
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ApiError(0, f"cannot reach {self.url}: {exc}") from exc
                time.sleep(min(2**attempt, 10))  # backoff before retrying a lost connection
                continue
            if response.status_code in (429, 503) and attempt < self.retries:
                time.sleep(min(float(response.headers.get("Retry-After", "1")), 60))
                continue
            return self._decode(response)
        raise AssertionError("unreachable")

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        if response.is_success:
            return body
        if isinstance(body, dict):
            raise ApiError(response.status_code, str(body.get("detail")), body.get("errors"))
        raise ApiError(response.status_code, response.text[:300] or response.reason_phrase)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, following ``next``."""
        page = self.get(path, **params)
        while True:
            yield from page["results"]
            if not page.get("next"):
                return
            page = self._decode(self._http.get(page["next"]))

    def download(self, path: str, destination: Any) -> int:
        """Stream a file answer into ``destination`` (a binary file); returns the bytes written."""
        written = 0
        with self._http.stream("GET", path) as response:
            if not response.is_success:
                response.read()
                self._decode(response)
            for chunk in response.iter_bytes():
                destination.write(chunk)
                written += len(chunk)
        return written

    # -- jobs ------------------------------------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.get(f"/jobs/{job_id}"))

    def wait(
        self,
        job_id: int,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll a job until it finishes; raises JobFailed unless it succeeded."""
        started = time.monotonic()
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in FINISHED | STOPPED or job.get("is_terminal"):
                if job["status"] != "succeeded":
                    raise JobFailed(job)
                return job
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise JobFailed({**job, "error": f"still {job['status']} after {timeout_s:.0f} s"})
            time.sleep(poll_s)  # polling interval of a remote job, not synchronisation

    # -- the task gateway ------------------------------------------------------------------------

    def infer(
        self, project: str, inputs: dict[str, Any], *, deadline_ms: int | None = None
    ) -> InferResult:
        """Ask the project's task (``project`` is its slug; the gateway decides who answers)."""
        return self._infer(project, inputs, deadline_ms)[0]

    def infer_batch(
        self, project: str, inputs: list[dict[str, Any]], *, deadline_ms: int | None = None
    ) -> list[InferResult]:
        """Answers to up to 100 inputs, in order."""
        return self._infer(project, inputs, deadline_ms)

    def _infer(self, project: str, inputs: Any, deadline_ms: int | None) -> list[InferResult]:
        body: dict[str, Any] = {"inputs": inputs}
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        # Inference starts nothing to repeat: no Idempotency-Key (and no row stored per call).
        reply = self.request("POST", f"/projects/{project}/infer", json=body, idempotent=False)
        return [InferResult.from_json(r) for r in reply["results"]]
