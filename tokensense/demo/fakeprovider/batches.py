"""Batch jobs and files as the providers serve them: OpenAI files and batches, Anthropic Message Batches.

A job is answered line by line by the same handlers as the synchronous calls
(`openai_format.chat`, `anthropic_format.messages`, ...), so a batch line's usage
is what the same request would have reported on its own. Jobs finish when they
are looked at `x-fake-batch-seconds` (default 0) after their creation, so a test
can see `in_progress` first when it asks for it. State lives in the fake process
(`FakeRequest.state`), like stored responses.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tokensense.demo.fakeprovider import anthropic_format, openai_format
from tokensense.demo.fakeprovider.replies import BodyReply, FakeError, FakeRequest, Reply, json_reply
from tokensense.demo.fakeprovider.textgen import NO_CONTROLS

FILES = "batch_files"
BATCHES = "openai_batches"
MESSAGE_BATCHES = "anthropic_message_batches"
_DAY = 24 * 3600

# The endpoints an OpenAI batch may name, and the handler that answers each line.
OPENAI_BATCH_ENDPOINTS: dict[str, Callable[[FakeRequest], Reply]] = {
    "/v1/chat/completions": openai_format.chat,
    "/v1/embeddings": openai_format.embeddings,
}


def _now() -> int:
    return int(time.time())


def _store(req: FakeRequest, name: str) -> dict[str, Any]:
    return req.state.setdefault(name, {})


def finish_after(req: FakeRequest) -> float:
    """Seconds after its creation a job (batch, video) finishes: `x-fake-batch-seconds`, default 0."""
    value = req.headers.get("x-fake-batch-seconds", "0")
    try:
        return max(0.0, float(value))
    except ValueError:
        raise FakeError(400, "x-fake-batch-seconds must be a number of seconds") from None


def _answer(handler: Callable[[FakeRequest], Reply], req: FakeRequest, body: Any) -> tuple[int, Any]:
    """One line's answer from the synchronous handler: (status, JSON body)."""
    line_req = replace(req, body=body, controls=NO_CONTROLS, files={}, raw_body=b"")
    try:
        reply = handler(line_req)
    except FakeError as e:
        fmt = anthropic_format if handler is anthropic_format.messages else openai_format
        reply = fmt.error(e.status, e.message, e.param)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
        fmt = anthropic_format if handler is anthropic_format.messages else openai_format
        reply = fmt.error(400, f"Invalid request body ({type(e).__name__}).")
    if not isinstance(reply, BodyReply):  # a stream: batches do not stream
        return 400, {"error": {"message": "stream is not supported in batches", "type": "invalid_request_error"}}
    return reply.status, json.loads(reply.body)


# --- OpenAI files ------------------------------------------------------------------------------


def _file_object(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: entry[key] for key in ("id", "object", "bytes", "created_at", "filename", "purpose", "status",
                                        "expires_at", "status_details")}


def _new_file(req: FakeRequest, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    entry = {"id": file_id, "object": "file", "bytes": len(data), "created_at": _now(), "filename": filename,
             "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None, "data": data}
    _store(req, FILES)[file_id] = entry
    return entry


def _mistral(req: FakeRequest) -> bool:
    """Under a `/mistral` prefix the files answer in Mistral's shape (`UploadFileOut`, `ListFilesOut`)."""
    return req.prefix.rstrip("/").endswith("/mistral")


def _mistral_file_object(entry: dict[str, Any]) -> dict[str, Any]:
    lines = sum(1 for raw in entry["data"].splitlines() if raw.strip())
    return {"id": entry["id"], "object": "file", "bytes": entry["bytes"], "created_at": entry["created_at"],
            "filename": entry["filename"], "purpose": entry["purpose"],
            "sample_type": "batch_result" if entry["purpose"] == "batch_output" else "batch_request",
            "num_lines": lines, "mimetype": "application/jsonl", "source": "mistral" if entry["purpose"] ==
            "batch_output" else "upload", "signature": None}


def files(req: FakeRequest) -> Reply:
    """`/v1/files`: POST uploads (multipart `file` + `purpose`), GET lists."""
    if _mistral(req):
        return mistral_files(req)
    if req.method == "GET":
        purpose = req.query.get("purpose")
        data = [_file_object(f) for f in _store(req, FILES).values() if purpose in (None, f["purpose"])]
        data.sort(key=lambda f: f["created_at"], reverse=True)
        return json_reply({"object": "list", "data": data, "has_more": False,
                           "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})
    form = req.body if isinstance(req.body, dict) else {}
    fields = form.get("fields", {})
    purpose = fields.get("purpose")
    if "file" not in req.files:
        raise FakeError(400, "'file' is a required property", param="file")
    if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data", "evals"):
        raise FakeError(400, f"'{purpose}' is not one of the supported purposes", param="purpose")
    filename = form.get("files", {}).get("file", {}).get("filename") or "upload"
    entry = _new_file(req, req.files["file"], filename, purpose)
    return json_reply(_file_object(entry))


def _find_file(req: FakeRequest) -> dict[str, Any]:
    entry = _store(req, FILES).get(req.params.get("id", ""))
    if entry is None:
        raise FakeError(404, f"No such File object: {req.params.get('id', '')}", param="id")
    return entry


def file(req: FakeRequest) -> Reply:
    """`/v1/files/{id}`: GET retrieves, DELETE deletes."""
    entry = _find_file(req)
    if req.method == "DELETE":
        del _store(req, FILES)[entry["id"]]
        return json_reply({"id": entry["id"], "object": "file", "deleted": True})
    return json_reply(_mistral_file_object(entry) if _mistral(req) else _file_object(entry))


def file_content(req: FakeRequest) -> Reply:
    """`/v1/files/{id}/content`: the file's bytes."""
    entry = _find_file(req)
    return BodyReply(200, entry["data"], content_type="application/octet-stream")


# --- OpenAI batches ----------------------------------------------------------------------------


def _batch_object(batch: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in batch.items() if not key.startswith("_")}


def batches(req: FakeRequest) -> Reply:
    """`/v1/batches`: POST creates a job from an uploaded JSONL file, GET lists."""
    store = _store(req, BATCHES)
    if req.method == "GET":
        data = [_batch_object(_advance_openai(req, b)) for b in store.values()]
        data.sort(key=lambda b: b["created_at"], reverse=True)
        return json_reply({"object": "list", "data": data, "has_more": False,
                           "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})
    body = req.body if isinstance(req.body, dict) else {}
    endpoint = body.get("endpoint")
    if endpoint not in OPENAI_BATCH_ENDPOINTS:
        raise FakeError(400, f"endpoint must be one of {sorted(OPENAI_BATCH_ENDPOINTS)}", param="endpoint")
    if body.get("completion_window") != "24h":
        raise FakeError(400, "completion_window must be '24h'", param="completion_window")
    input_id = body.get("input_file_id")
    source = _store(req, FILES).get(input_id) if isinstance(input_id, str) else None
    if source is None:
        raise FakeError(400, f"No such File object: {input_id}", param="input_file_id")
    if source["purpose"] != "batch":
        raise FakeError(400, "The input file must be uploaded with purpose 'batch'.", param="input_file_id")
    lines = _jsonl(source["data"])
    now = _now()
    batch = {
        "id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": endpoint, "errors": None,
        "input_file_id": input_id, "completion_window": "24h", "status": "in_progress", "output_file_id": None,
        "error_file_id": None, "created_at": now, "in_progress_at": now, "expires_at": now + _DAY,
        "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
        "cancelled_at": None, "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        "metadata": body.get("metadata"), "_finish_at": time.time() + finish_after(req),
    }
    store[batch["id"]] = batch
    return json_reply(_batch_object(batch))


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    lines = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            raise FakeError(400, f"Line {number} of the input file is not valid JSON.", param="input_file_id") from None
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            raise FakeError(400, f"Line {number} of the input file has no custom_id.", param="input_file_id")
        lines.append(line)
    return lines


def _advance_openai(req: FakeRequest, batch: dict[str, Any]) -> dict[str, Any]:
    """Run the job once its time has come: one output line per input line, usage as the handler reports it."""
    if batch["status"] == "cancelling":
        batch.update(status="cancelled", cancelled_at=_now())
    if batch["status"] != "in_progress" or time.time() < batch["_finish_at"]:
        return batch
    source = _store(req, FILES)[batch["input_file_id"]]
    handler = OPENAI_BATCH_ENDPOINTS[batch["endpoint"]]
    output, errors = [], []
    totals = {"input_tokens": 0, "output_tokens": 0, "cached": 0, "reasoning": 0}
    for line in _jsonl(source["data"]):
        line_id = f"batch_req_{uuid.uuid4().hex[:24]}"
        if line.get("url") != batch["endpoint"] or line.get("method", "POST") != "POST":
            errors.append({"id": line_id, "custom_id": line["custom_id"], "response": None,
                           "error": {"code": "invalid_url", "message": f"The line's url must be {batch['endpoint']}."}})
            continue
        status, answer = _answer(handler, req, line.get("body"))
        result = {"id": line_id, "custom_id": line["custom_id"],
                  "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": answer}, "error": None}
        (output if status == 200 else errors).append(result)
        usage = answer.get("usage") if status == 200 and isinstance(answer, dict) else None
        if isinstance(usage, dict):
            totals["input_tokens"] += usage.get("prompt_tokens", 0)
            totals["output_tokens"] += usage.get("completion_tokens", 0)
            totals["cached"] += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            totals["reasoning"] += (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    now = _now()
    if output:
        batch["output_file_id"] = _new_file(req, _dump_jsonl(output), f"{batch['id']}_output.jsonl",
                                            "batch_output")["id"]
    if errors:
        batch["error_file_id"] = _new_file(req, _dump_jsonl(errors), f"{batch['id']}_error.jsonl",
                                           "batch_output")["id"]
    batch["request_counts"] = {"total": len(output) + len(errors), "completed": len(output), "failed": len(errors)}
    batch["usage"] = {"input_tokens": totals["input_tokens"], "output_tokens": totals["output_tokens"],
                      "total_tokens": totals["input_tokens"] + totals["output_tokens"],
                      "input_tokens_details": {"cached_tokens": totals["cached"]},
                      "output_tokens_details": {"reasoning_tokens": totals["reasoning"]}}
    batch.update(status="completed", finalizing_at=now, completed_at=now)
    return batch


def _dump_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)


def _find_batch(req: FakeRequest, store_name: str, what: str) -> dict[str, Any]:
    batch = _store(req, store_name).get(req.params.get("id", ""))
    if batch is None:
        raise FakeError(404, f"No such {what}: {req.params.get('id', '')}", param="id")
    return batch


def batch(req: FakeRequest) -> Reply:
    """`/v1/batches/{id}`: GET retrieves (and runs a job whose time has come)."""
    return json_reply(_batch_object(_advance_openai(req, _find_batch(req, BATCHES, "batch"))))


def cancel_batch(req: FakeRequest) -> Reply:
    """`/v1/batches/{id}/cancel`: an unfinished job goes to `cancelling` (then `cancelled`)."""
    job = _find_batch(req, BATCHES, "batch")
    if job["status"] not in ("validating", "in_progress"):
        raise FakeError(409, f"Cannot cancel a batch with status '{job['status']}'.")
    job.update(status="cancelling", cancelling_at=_now())
    return json_reply(_batch_object(job))


# --- Anthropic Message Batches -----------------------------------------------------------------


def _message_batch_object(req: FakeRequest, job: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in job.items() if not key.startswith("_")}
    if job["processing_status"] == "ended":
        out["results_url"] = f"{req.origin}{req.prefix}/v1/messages/batches/{job['id']}/results"
    return out


def message_batches(req: FakeRequest) -> Reply:
    """`/v1/messages/batches`: POST creates a job from inline requests, GET lists."""
    store = _store(req, MESSAGE_BATCHES)
    if req.method == "GET":
        data = [_message_batch_object(req, _advance_anthropic(req, job)) for job in store.values()]
        data.sort(key=lambda b: b["created_at"], reverse=True)
        return json_reply({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None})
    body = req.body if isinstance(req.body, dict) else {}
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise FakeError(400, "requests: Field required", param="requests")
    seen: set[str] = set()
    for index, item in enumerate(requests):
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str) or \
                not isinstance(item.get("params"), dict):
            raise FakeError(400, f"requests.{index}: custom_id and params are required")
        if item["custom_id"] in seen:
            raise FakeError(400, f"requests.{index}.custom_id: duplicate custom_id '{item['custom_id']}'")
        seen.add(item["custom_id"])
    now = time.time()
    job = {
        "id": f"msgbatch_{uuid.uuid4().hex[:24]}", "type": "message_batch", "processing_status": "in_progress",
        "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
        "ended_at": None, "created_at": _iso(now), "expires_at": _iso(now + _DAY), "archived_at": None,
        "cancel_initiated_at": None, "results_url": None, "_requests": requests,
        "_finish_at": now + finish_after(req), "_results": None,
    }
    store[job["id"]] = job
    return json_reply(_message_batch_object(req, job))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _advance_anthropic(req: FakeRequest, job: dict[str, Any]) -> dict[str, Any]:
    if job["processing_status"] == "ended":
        return job
    canceling = job["processing_status"] == "canceling"
    if not canceling and time.time() < job["_finish_at"]:
        return job
    results = []
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    for item in job["_requests"]:
        if canceling:
            results.append({"custom_id": item["custom_id"], "result": {"type": "canceled"}})
            counts["canceled"] += 1
            continue
        status, answer = _answer(anthropic_format.messages, req, item["params"])
        if status == 200:
            results.append({"custom_id": item["custom_id"], "result": {"type": "succeeded", "message": answer}})
            counts["succeeded"] += 1
        else:
            results.append({"custom_id": item["custom_id"], "result": {"type": "errored", "error": answer}})
            counts["errored"] += 1
    job.update(processing_status="ended", ended_at=_iso(time.time()), request_counts=counts, _results=results)
    return job


def message_batch(req: FakeRequest) -> Reply:
    """`/v1/messages/batches/{id}`: GET retrieves, DELETE deletes an ended job."""
    job = _advance_anthropic(req, _find_batch(req, MESSAGE_BATCHES, "message batch"))
    if req.method == "DELETE":
        if job["processing_status"] != "ended":
            raise FakeError(400, "A batch that is still processing cannot be deleted; cancel it first.")
        del _store(req, MESSAGE_BATCHES)[job["id"]]
        return json_reply({"id": job["id"], "type": "message_batch_deleted"})
    return json_reply(_message_batch_object(req, job))


def cancel_message_batch(req: FakeRequest) -> Reply:
    job = _find_batch(req, MESSAGE_BATCHES, "message batch")
    if job["processing_status"] == "in_progress":
        job.update(processing_status="canceling", cancel_initiated_at=_iso(time.time()))
    return json_reply(_message_batch_object(req, job))


def message_batch_results(req: FakeRequest) -> Reply:
    """`/v1/messages/batches/{id}/results`: the results as JSONL, once the job ended."""
    job = _advance_anthropic(req, _find_batch(req, MESSAGE_BATCHES, "message batch"))
    if job["processing_status"] != "ended":
        raise FakeError(400, f"No batch results available for {job['id']}: the batch is still processing.")
    return BodyReply(200, _dump_jsonl(job["_results"]), content_type="application/binary")


# --- Gemini files (resumable upload) and batch mode --------------------------------------------

GEMINI_FILES = "gemini_files"
GEMINI_BATCHES = "gemini_batches"
_UPLOADS = "gemini_uploads"
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(seconds))


def _gemini_file(req: FakeRequest, name: str, data: bytes, display_name: str | None, mime_type: str,
                 source: str) -> dict[str, Any]:
    now = time.time()
    entry = {"name": name, "displayName": display_name or name.split("/", 1)[1], "mimeType": mime_type,
             "sizeBytes": str(len(data)), "createTime": _rfc3339(now), "updateTime": _rfc3339(now),
             "expirationTime": _rfc3339(now + 2 * _DAY), "sha256Hash": "", "uri": f"{req.origin}{req.prefix}/v1beta/{name}",
             "state": "ACTIVE", "source": source, "_data": data}
    if source == "GENERATED":
        entry["downloadUri"] = f"{req.origin}{req.prefix}/download/v1beta/{name}:download?alt=media"
    _store(req, GEMINI_FILES)[name] = entry
    return entry


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if not key.startswith("_")}


def gemini_upload(req: FakeRequest) -> Reply:
    """`/upload/v1beta/files`: the resumable protocol's `start` (metadata), then `upload, finalize` (bytes)."""
    command = req.headers.get("x-goog-upload-command", "")
    uploads = _store(req, _UPLOADS)
    if "start" in command:
        meta = req.body.get("file", {}) if isinstance(req.body, dict) else {}
        upload_id = uuid.uuid4().hex
        uploads[upload_id] = {"file": meta if isinstance(meta, dict) else {}, "data": b""}
        url = f"{req.origin}{req.prefix}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return json_reply({}, headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
    upload = uploads.get(req.query.get("upload_id", ""))
    if upload is None:
        raise FakeError(404, "No such upload session.")
    upload["data"] += req.raw_body
    if "finalize" not in command:
        return json_reply({}, headers={"x-goog-upload-status": "active"})
    del uploads[req.query["upload_id"]]
    meta = upload["file"]
    name = meta.get("name") or f"files/{uuid.uuid4().hex[:12]}"
    entry = _gemini_file(req, name, upload["data"], meta.get("displayName") or meta.get("display_name"),
                         meta.get("mimeType") or meta.get("mime_type") or "application/octet-stream", "UPLOADED")
    return json_reply({"file": _public(entry)}, headers={"x-goog-upload-status": "final"})


def _find_gemini_file(req: FakeRequest) -> dict[str, Any]:
    name = f"files/{req.params.get('id', '')}"
    entry = _store(req, GEMINI_FILES).get(name)
    if entry is None:
        raise FakeError(404, f"File {name} not found.")
    return entry


def gemini_files(req: FakeRequest) -> Reply:
    """`/v1beta/files`: GET lists."""
    return json_reply({"files": [_public(f) for f in _store(req, GEMINI_FILES).values()]})


def gemini_file(req: FakeRequest) -> Reply:
    """`/v1beta/files/{id}`: GET, DELETE."""
    entry = _find_gemini_file(req)
    if req.method == "DELETE":
        del _store(req, GEMINI_FILES)[entry["name"]]
        return json_reply({})
    return json_reply(_public(entry))


def gemini_download(req: FakeRequest) -> Reply:
    """`/download/v1beta/files/{id}:download?alt=media`: a generated file's bytes."""
    entry = _find_gemini_file(req)
    if entry["source"] != "GENERATED":
        raise FakeError(400, "Only generated files can be downloaded.")
    return BodyReply(200, entry["_data"], content_type="application/octet-stream")


def gemini_batch_create(req: FakeRequest) -> Reply:
    """`models/{model}:batchGenerateContent`: a job from inline requests or an uploaded JSONL file."""
    body = req.body if isinstance(req.body, dict) else {}
    batch = body.get("batch")
    if not isinstance(batch, dict):
        raise FakeError(400, "batch: Field required")
    config = batch.get("inputConfig") or batch.get("input_config") or {}
    inline = (config.get("requests") or {}).get("requests") if isinstance(config, dict) else None
    file_name = config.get("fileName") or config.get("file_name") if isinstance(config, dict) else None
    if inline is not None:
        if not isinstance(inline, list) or not all(isinstance(r, dict) for r in inline):
            raise FakeError(400, "batch.inputConfig.requests.requests must be a list of requests")
        items = [{"key": None, "request": r.get("request"), "metadata": r.get("metadata")} for r in inline]
    elif isinstance(file_name, str):
        source = _store(req, GEMINI_FILES).get(file_name)
        if source is None:
            raise FakeError(404, f"File {file_name} not found.")
        items = []
        for raw in source["_data"].splitlines():
            if raw.strip():
                line = json.loads(raw)
                items.append({"key": line.get("key"), "request": line.get("request"), "metadata": None})
    else:
        raise FakeError(400, "batch.inputConfig needs requests or fileName")
    now = time.time()
    job_id = uuid.uuid4().hex[:16]
    model = req.params["model"]
    job = {"name": f"batches/{job_id}", "model": f"models/{model}", "displayName": batch.get("displayName") or job_id,
           "createTime": _rfc3339(now), "updateTime": _rfc3339(now), "state": "BATCH_STATE_PENDING",
           "batchStats": {"requestCount": str(len(items)), "pendingRequestCount": str(len(items))},
           "_items": items, "_file_input": inline is None, "_finish_at": now + finish_after(req)}
    _store(req, GEMINI_BATCHES)[job["name"]] = job
    return json_reply(_operation(job))


def _operation(job: dict[str, Any]) -> dict[str, Any]:
    metadata = {"@type": _BATCH_TYPE, **_public(job)}
    metadata["name"] = job["name"]
    operation: dict[str, Any] = {"name": job["name"], "metadata": metadata}
    if job["state"] in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED", "BATCH_STATE_FAILED"):
        operation["done"] = True
        operation["response"] = {"@type": _BATCH_TYPE.replace("GenerateContentBatch", "GenerateContentBatchOutput"),
                                 **job.get("output", {})}
    return operation


def _advance_gemini(req: FakeRequest, job: dict[str, Any]) -> dict[str, Any]:
    if job["state"] != "BATCH_STATE_PENDING" or time.time() < job["_finish_at"]:
        return job
    from tokensense.demo.fakeprovider import gemini_format

    model = job["model"].removeprefix("models/")
    results, ok, failed = [], 0, 0
    for item in job["_items"]:
        line_req = replace(req, params={"model": model, "action": "generateContent"})
        status, answer = _answer(gemini_format.generate, line_req, item["request"])
        result: dict[str, Any] = {"response": answer} if status == 200 else {"error": answer.get("error", answer)}
        if job["_file_input"]:
            result = {"key": item["key"], **result}
        elif item["metadata"] is not None:
            result["metadata"] = item["metadata"]
        results.append(result)
        ok, failed = (ok + 1, failed) if status == 200 else (ok, failed + 1)
    now = time.time()
    if job["_file_input"]:
        generated = _gemini_file(req, f"files/batch-{uuid.uuid4().hex[:12]}", _dump_jsonl(results), None,
                                 "application/jsonl", "GENERATED")
        job["output"] = {"responsesFile": generated["name"]}
    else:
        job["output"] = {"inlinedResponses": {"inlinedResponses": results}}
    job.update(state="BATCH_STATE_SUCCEEDED", endTime=_rfc3339(now), updateTime=_rfc3339(now),
               batchStats={"requestCount": str(ok + failed), "successfulRequestCount": str(ok),
                           "failedRequestCount": str(failed)})
    return job


def _find_gemini_batch(req: FakeRequest) -> dict[str, Any]:
    job = _store(req, GEMINI_BATCHES).get(f"batches/{req.params.get('id', '')}")
    if job is None:
        raise FakeError(404, f"Batch batches/{req.params.get('id', '')} not found.")
    return job


def gemini_batches(req: FakeRequest) -> Reply:
    """`/v1beta/batches`: GET lists (as operations)."""
    jobs = [_operation(_advance_gemini(req, job)) for job in _store(req, GEMINI_BATCHES).values()]
    return json_reply({"operations": jobs})


def gemini_batch(req: FakeRequest) -> Reply:
    """`/v1beta/batches/{id}`: GET (runs a job whose time has come), DELETE."""
    job = _advance_gemini(req, _find_gemini_batch(req))
    if req.method == "DELETE":
        del _store(req, GEMINI_BATCHES)[job["name"]]
        return json_reply({})
    return json_reply(_operation(job))


def gemini_batch_cancel(req: FakeRequest) -> Reply:
    """`/v1beta/batches/{id}:cancel`."""
    job = _find_gemini_batch(req)
    if job["state"] == "BATCH_STATE_PENDING":
        job.update(state="BATCH_STATE_CANCELLED", updateTime=_rfc3339(time.time()), output={})
    return json_reply({})


# --- Mistral batch jobs (https://docs.mistral.ai/capabilities/batch/) ----------------------------

MISTRAL_BATCHES = "mistral_batches"
# The endpoints a Mistral job may name, and the handler that answers each line (the job's model in its body).
MISTRAL_BATCH_ENDPOINTS: dict[str, Callable[[FakeRequest], Reply]] = {
    "/v1/chat/completions": openai_format.chat,
    "/v1/embeddings": openai_format.embeddings,
}


def mistral_files(req: FakeRequest) -> Reply:
    """Mistral's `/v1/files`: POST uploads (multipart `file`, `purpose` batch, fine-tune or ocr), GET lists."""
    if req.method == "GET":
        data = [_mistral_file_object(f) for f in _store(req, FILES).values()]
        data.sort(key=lambda f: f["created_at"], reverse=True)
        return json_reply({"data": data, "object": "list", "total": len(data)})
    form = req.body if isinstance(req.body, dict) else {}
    purpose = form.get("fields", {}).get("purpose", "fine-tune")
    if "file" not in req.files:
        raise FakeError(422, "file: Field required", param="file")
    if purpose not in ("batch", "fine-tune", "ocr"):
        raise FakeError(422, f"purpose: Input should be 'fine-tune', 'batch' or 'ocr', not '{purpose}'")
    filename = form.get("files", {}).get("file", {}).get("filename") or "upload"
    entry = _mistral_file(req, req.files["file"], filename, purpose)
    return json_reply(_mistral_file_object(entry))


def _mistral_file(req: FakeRequest, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
    """A file with Mistral's kind of id (a UUID)."""
    entry = _new_file(req, data, filename, purpose)
    store = _store(req, FILES)
    del store[entry["id"]]
    entry["id"] = str(uuid.uuid4())
    store[entry["id"]] = entry
    return entry


def _mistral_job_object(job: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in job.items() if not key.startswith("_")}


def mistral_batch_jobs(req: FakeRequest) -> Reply:
    """`/v1/batch/jobs`: POST creates a job (`input_files`, `model`, `endpoint`), GET lists (`BatchJobsOut`)."""
    store = _store(req, MISTRAL_BATCHES)
    if req.method == "GET":
        data = [_mistral_job_object(_advance_mistral(req, job)) for job in store.values()]
        data.sort(key=lambda job: job["created_at"], reverse=True)
        return json_reply({"data": data, "object": "list", "total": len(data)})
    body = req.body if isinstance(req.body, dict) else {}
    endpoint, model, input_files = body.get("endpoint"), body.get("model"), body.get("input_files")
    if endpoint not in MISTRAL_BATCH_ENDPOINTS:
        raise FakeError(422, f"endpoint: Input should be one of {sorted(MISTRAL_BATCH_ENDPOINTS)}")
    if not isinstance(model, str) or not model:
        raise FakeError(422, "model: Field required")
    inline = body.get("requests")
    if inline is not None:  # inline requests: their results come back in the job's `outputs`
        if not isinstance(inline, list) or not all(isinstance(r, dict) and isinstance(r.get("custom_id"), str)
                                                   and isinstance(r.get("body"), dict) for r in inline):
            raise FakeError(422, "requests: each needs custom_id and body")
        input_files = []
    elif not isinstance(input_files, list) or not input_files:
        raise FakeError(422, "input_files: Field required")
    requests = len(inline or [])
    for file_id in input_files:
        source = _store(req, FILES).get(file_id) if isinstance(file_id, str) else None
        if source is None or source["purpose"] != "batch":
            raise FakeError(404, f"File {file_id} not found or not uploaded with purpose 'batch'.")
        requests += len(_jsonl(source["data"]))
    now = _now()
    job = {
        "id": str(uuid.uuid4()), "object": "batch", "input_files": input_files, "metadata": body.get("metadata"),
        "endpoint": endpoint, "model": model, "agent_id": None, "output_file": None, "error_file": None,
        "errors": [], "outputs": None, "status": "QUEUED", "created_at": now, "total_requests": requests,
        "completed_requests": 0, "succeeded_requests": 0, "failed_requests": 0, "started_at": None,
        "completed_at": None, "_finish_at": time.time() + finish_after(req), "_requests": inline,
    }
    store[job["id"]] = job
    return json_reply(_mistral_job_object(job))


def _advance_mistral(req: FakeRequest, job: dict[str, Any]) -> dict[str, Any]:
    """Run the job once its time has come: each input line answered for the job's model."""
    if job["status"] == "CANCELLATION_REQUESTED":
        job.update(status="CANCELLED", completed_at=_now())
    if job["status"] not in ("QUEUED", "RUNNING") or time.time() < job["_finish_at"]:
        if job["status"] == "QUEUED":
            job.update(status="RUNNING", started_at=_now())
        return job
    handler = MISTRAL_BATCH_ENDPOINTS[job["endpoint"]]
    output, errors = [], []
    lines = job["_requests"] or [line for file_id in job["input_files"]
                                 for line in _jsonl(_store(req, FILES)[file_id]["data"])]
    for line in lines:
        body = line.get("body")
        status, answer = _answer(handler, req, {**body, "model": job["model"]} if isinstance(body, dict) else None)
        result = {"id": f"batch-{uuid.uuid4().hex[:16]}", "custom_id": line["custom_id"],
                  "response": {"status_code": status, "body": answer}, "error": None}
        if status != 200:
            result["error"] = {"message": json.dumps(answer)[:500], "code": status}
        (output if status == 200 else errors).append(result)
    if job["_requests"]:
        job["outputs"] = output + errors
    elif output:
        entry = _mistral_file(req, _dump_jsonl(output), f"{job['id']}.jsonl", "batch_output")
        job["output_file"] = entry["id"]
    if errors and not job["_requests"]:
        entry = _mistral_file(req, _dump_jsonl(errors), f"{job['id']}_error.jsonl", "batch_output")
        job["error_file"] = entry["id"]
    now = _now()
    job.update(status="SUCCESS", started_at=job["started_at"] or now, completed_at=now,
               completed_requests=len(output) + len(errors), succeeded_requests=len(output),
               failed_requests=len(errors))
    return job


def mistral_batch_job(req: FakeRequest) -> Reply:
    """`/v1/batch/jobs/{id}`: GET retrieves (and runs a job whose time has come)."""
    return json_reply(_mistral_job_object(_advance_mistral(req, _find_batch(req, MISTRAL_BATCHES, "batch job"))))


def mistral_batch_cancel(req: FakeRequest) -> Reply:
    """`/v1/batch/jobs/{id}/cancel`: an unfinished job goes to `CANCELLATION_REQUESTED` (then `CANCELLED`)."""
    job = _find_batch(req, MISTRAL_BATCHES, "batch job")
    if job["status"] in ("QUEUED", "RUNNING"):
        job["status"] = "CANCELLATION_REQUESTED"
    return json_reply(_mistral_job_object(job))
