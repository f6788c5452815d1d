"""Batch APIs of the fake provider: OpenAI files and batches, Anthropic message batches. A batch
finishes after ``batch_polls_before_done`` polls, answering each line like a direct call."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from tests.fakes.anthropic_wire import AnthropicWire, anthropic_error
from tests.fakes.openai_wire import OpenAIWire, openai_error
from tests.fakes.provider_types import iso, jsonl


class OpenAIBatches(OpenAIWire):
    """``/v1/files`` and ``/v1/batches``."""

    def create_file(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        file_id = self._ids("file-")
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self._lock:
            self._files[file_id] = obj
            self._file_bytes[file_id] = data
        return obj

    def create_openai_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        input_file_id = str(body.get("input_file_id", ""))
        with self._lock:
            data = self._file_bytes.get(input_file_id)
        if data is None:
            return 404, openai_error(404, f"No such File object: {input_file_id}")
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        batch_id = self._ids("batch_")
        now = int(time.time())
        obj = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self._lock:
            self._openai_batches[batch_id] = obj
            self._batch_inputs[batch_id] = lines
            self._batch_polls[batch_id] = 0
        return 200, obj

    def retrieve_openai_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._openai_batches.get(batch_id)
            if obj is None:
                return 404, openai_error(404, f"No batch found with id '{batch_id}'")
            self._batch_polls[batch_id] += 1
            ready = (
                obj["status"] in ("validating", "in_progress")
                and self._batch_polls[batch_id] > self.batch_polls_before_done
            )
            if obj["status"] == "validating" and not ready:
                obj["status"] = "in_progress"
                obj["in_progress_at"] = int(time.time())
        if ready:
            self._finish_openai_batch(batch_id)
        with self._lock:
            return 200, json.loads(json.dumps(obj))

    def _finish_openai_batch(self, batch_id: str) -> None:
        with self._lock:
            lines = list(self._batch_inputs[batch_id])
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for line in lines:
            status, body = self.openai_completion(line.get("body") or {}, batch=True)
            record = {
                "id": self._ids("batch_req_"),
                "custom_id": line.get("custom_id"),
                "response": {
                    "status_code": status,
                    "request_id": self._ids("req_"),
                    "body": body,
                },
                "error": None,
            }
            (outputs if status == 200 else errors).append(record)
        out = self.create_file("batch_output.jsonl", "batch_output", jsonl(outputs))
        err = (
            self.create_file("batch_errors.jsonl", "batch_output", jsonl(errors))
            if errors
            else None
        )
        now = int(time.time())
        with self._lock:
            obj = self._openai_batches[batch_id]
            obj.update(
                status="completed",
                output_file_id=out["id"],
                error_file_id=err["id"] if err else None,
                finalizing_at=now,
                completed_at=now,
                request_counts={
                    "total": len(lines),
                    "completed": len(outputs),
                    "failed": len(errors),
                },
            )

    def cancel_openai_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._openai_batches.get(batch_id)
            if obj is None:
                return 404, openai_error(404, f"No batch found with id '{batch_id}'")
            if obj["status"] in ("validating", "in_progress"):
                obj.update(status="cancelled", cancelled_at=int(time.time()))
            return 200, json.loads(json.dumps(obj))


class AnthropicBatches(AnthropicWire):
    """``/v1/messages/batches``."""

    def create_anthropic_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        requests = list(body.get("requests") or [])
        for item in requests:
            custom_id = str(item.get("custom_id", ""))
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", custom_id):
                return 400, anthropic_error(
                    400, f"requests.custom_id: {custom_id!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
        batch_id = self._ids("msgbatch_")
        obj = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": len(requests),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": None,
            "created_at": iso(time.time()),
            "expires_at": iso(time.time() + 86400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
        }
        with self._lock:
            self._anthropic_batches[batch_id] = obj
            self._batch_inputs[batch_id] = requests
            self._batch_polls[batch_id] = 0
        return 200, obj

    def retrieve_anthropic_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._anthropic_batches.get(batch_id)
            if obj is None:
                return 404, anthropic_error(404, f"message batch {batch_id} not found")
            self._batch_polls[batch_id] += 1
            ready = (
                obj["processing_status"] == "in_progress"
                and self._batch_polls[batch_id] > self.batch_polls_before_done
            )
        if ready:
            self._finish_anthropic_batch(batch_id)
        with self._lock:
            return 200, json.loads(json.dumps(obj))

    def _finish_anthropic_batch(self, batch_id: str, *, canceled: bool = False) -> None:
        with self._lock:
            requests = list(self._batch_inputs[batch_id])
        results = []
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for item in requests:
            if canceled:
                result: dict[str, Any] = {"type": "canceled"}
                counts["canceled"] += 1
            else:
                status, body = self.anthropic_message(item.get("params") or {}, batch=True)
                if status == 200:
                    result = {"type": "succeeded", "message": body}
                    counts["succeeded"] += 1
                else:
                    result = {"type": "errored", "error": body}
                    counts["errored"] += 1
            results.append({"custom_id": item.get("custom_id"), "result": result})
        with self._lock:
            self._anthropic_results[batch_id] = jsonl(results)
            obj = self._anthropic_batches[batch_id]
            obj.update(
                processing_status="ended",
                request_counts=counts,
                ended_at=iso(time.time()),
                results_url=f"{self.results_url_origin or self.url}"
                f"/v1/messages/batches/{batch_id}/results",
            )

    def cancel_anthropic_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._anthropic_batches.get(batch_id)
            if obj is None:
                return 404, anthropic_error(404, f"message batch {batch_id} not found")
            running = obj["processing_status"] == "in_progress"
            if running:
                obj["cancel_initiated_at"] = iso(time.time())
        if running:
            self._finish_anthropic_batch(batch_id, canceled=True)
        with self._lock:
            return 200, json.loads(json.dumps(obj))
