"""End to end: the long tail of billable paths (legacy completions, moderations, image edits and variations, audio
translations, Mistral FIM) through the gateway, with the openai SDK as the client (httpx for FIM)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from conftest import PROVIDER_KEYS, FakeProvider, Gateway, start_gateway, stop
from test_e2e_media import wav_file

from tokensense.demo.fakeprovider import media

pytestmark = pytest.mark.e2e

MICRO = 1e-6  # costs are checked to the micro-dollar


def client(gw: Gateway, exec_id: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0,
                         default_headers={"x-execution-id": exec_id})


def forwarded(gw: Gateway, prefix: str, path: str) -> dict:
    """The last request the fake got under `prefix`: at `path`, with the provider's key, never TokenSense's."""
    req = gw.fake.last(prefix)
    assert req["path"] == f"/{prefix}{path}"
    assert gw.key not in json.dumps(req), "the TokenSense key must not reach the provider"
    assert req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS[prefix]}"
    return req


def one_record(gw: Gateway, exec_id: str) -> dict:
    [record] = gw.wait_records(execution_id=exec_id)
    assert record["key_name"] == "e2e" and record["status"] == 200
    return record


def png(name: str = "input.png") -> io.BytesIO:
    image = io.BytesIO(media.png_bytes(64, 64))
    image.name = name
    return image


# --- legacy completions (genai-prices: gpt-3.5-turbo-instruct $1.5/1M input, $2/1M output) ---------------------


def test_completions_priced_as_the_models_tokens(gateway: Gateway, exec_id: str) -> None:
    raw = client(gateway, exec_id).completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=2)
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 2)
    req = forwarded(gateway, "openai", "/v1/completions")
    assert req["body"] == {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "max_tokens": 2}
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == \
        ("openai", "gpt-3.5-turbo-instruct", "completions")
    assert (record["input_tokens"], record["output_tokens"]) == (4, 2)
    assert record["cost_usd"] == pytest.approx(4 * 1.5e-6 + 2 * 2e-6, abs=MICRO)
    assert float(raw.headers["x-tokensense-cost-usd"]) == pytest.approx(record["cost_usd"], abs=MICRO)


def test_completions_stream_gets_its_usage_asked_for_and_dropped_again(gateway: Gateway, exec_id: str) -> None:
    chunks = list(client(gateway, exec_id).completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Hi there", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()
    assert all(c.usage is None for c in chunks), "the client did not ask for the usage chunk"
    req = forwarded(gateway, "openai", "/v1/completions")
    assert req["body"]["stream_options"] == {"include_usage": True}  # TokenSense asked, to meter the stream
    record = one_record(gateway, exec_id)
    assert record["endpoint"] == "completions" and record["input_tokens"] == 2 and record["output_tokens"] > 0
    assert record["cost_usd"] == pytest.approx(2 * 1.5e-6 + record["output_tokens"] * 2e-6, abs=MICRO)


def test_completions_stream_keeps_the_usage_chunk_the_client_asked_for(gateway: Gateway, exec_id: str) -> None:
    chunks = list(client(gateway, exec_id).completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Hi there", stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2
    record = one_record(gateway, exec_id)
    assert record["output_tokens"] == chunks[-1].usage.completion_tokens


# --- moderations: free ---------------------------------------------------------------------------------------


def test_moderation_recorded_free(gateway: Gateway, exec_id: str) -> None:
    moderation = client(gateway, exec_id).moderations.create(model="omni-moderation-latest",
                                                             input=["hello", "graphic violence"])
    assert [r.flagged for r in moderation.results] == [False, True]
    forwarded(gateway, "openai", "/v1/moderations")
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == \
        ("openai", "omni-moderation-latest", "moderations")
    assert record["cost_usd"] == 0  # free, not unpriced (NULL)


def test_moderation_without_a_model_goes_to_the_providers_default(gateway: Gateway, exec_id: str) -> None:
    moderation = client(gateway, exec_id).moderations.create(input="hello")
    assert moderation.results[0].flagged is False
    req = forwarded(gateway, "openai", "/v1/moderations")
    assert req["body"] == {"input": "hello", "model": "omni-moderation-latest"}
    assert one_record(gateway, exec_id)["model"] == "omni-moderation-latest"


def new_key(gw: Gateway, *options: str) -> str:
    return json.loads(gw.cli("keys", "create", f"lt-{uuid.uuid4().hex[:8]}", *options, "--json").stdout)["key"]


def test_moderation_is_policed_like_any_call_but_spends_no_budget(gateway: Gateway) -> None:
    # A budget smaller than any priced call's reservation: chat is refused, a free moderation is not.
    budget_key = new_key(gateway, "--budget-usd", "0.0000001")
    budgeted = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=budget_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        budgeted.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=50)
    assert refused.value.status_code in (402, 429)
    assert budgeted.moderations.create(model="omni-moderation-latest", input="hello").results
    # Access rules hold: a key limited to other models may not moderate.
    limited = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=new_key(gateway, "--allow-model", "gpt-4o*"),
                            max_retries=0)
    before = len(gateway.fake.requests())
    with pytest.raises(openai.PermissionDeniedError) as denied:
        limited.moderations.create(model="omni-moderation-latest", input="hello")
    assert "omni-moderation-latest" in str(denied.value)
    assert len(gateway.fake.requests()) == before


# --- image edits and variations -------------------------------------------------------------------------------


def test_gpt_image_1_edit_priced_by_its_tokens(gateway: Gateway, exec_id: str) -> None:
    edited = client(gateway, exec_id).images.edit(model="gpt-image-1", image=[png(), png("second.png")],
                                                  prompt="Add a hat", size="1024x1024")
    assert edited.data[0].b64_json and edited.usage is not None
    image_tokens = edited.usage.input_tokens_details.image_tokens
    assert image_tokens == 2 * 194
    text_tokens = edited.usage.input_tokens - image_tokens
    req = forwarded(gateway, "openai", "/v1/images/edits")
    assert req["headers"]["content-type"].startswith("multipart/form-data")
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("openai", "gpt-image-1", "images.edits")
    assert record["images"] == 1 and record["output_tokens"] == edited.usage.output_tokens
    # genai-prices gpt-image-1: text input $5/1M, image input $10/1M, output $40/1M.
    expected = text_tokens * 5e-6 + image_tokens * 10e-6 + edited.usage.output_tokens * 40e-6
    assert record["cost_usd"] == pytest.approx(expected, abs=MICRO)


def test_dall_e_2_edit_and_variation_priced_per_image_by_size(gateway: Gateway, exec_id: str) -> None:
    variation = client(gateway, exec_id).images.create_variation(model="dall-e-2", image=png(), n=2, size="256x256")
    assert len(variation.data) == 2
    forwarded(gateway, "openai", "/v1/images/variations")
    record = one_record(gateway, exec_id)
    assert (record["model"], record["endpoint"], record["images"]) == ("dall-e-2", "images.variations", 2)
    assert record["cost_usd"] == pytest.approx(2 * 0.016, abs=MICRO)  # media table: dall-e-2 256x256 $0.016

    edit_exec = exec_id + "-edit"
    client(gateway, edit_exec).images.edit(model="dall-e-2", image=png(), prompt="Add a hat", size="512x512")
    record = one_record(gateway, edit_exec)
    assert (record["endpoint"], record["images"]) == ("images.edits", 1)
    assert record["cost_usd"] == pytest.approx(0.018, abs=MICRO)  # dall-e-2 512x512 $0.018


def test_image_edit_without_an_image_is_a_400_that_never_leaves(gateway: Gateway, exec_id: str) -> None:
    before = len(gateway.fake.requests())
    r = httpx.post(f"{gateway.url}/v1/images/edits", headers={"authorization": f"Bearer {gateway.key}"},
                   data={"model": "gpt-image-1", "prompt": "Add a hat"}, files={"mask": ("m.png", b"x", "image/png")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    assert len(gateway.fake.requests()) == before


# --- audio translations (whisper-1: $0.006 a minute, like transcriptions) ---------------------------------------


def test_translation_priced_per_minute_of_the_measured_audio(gateway: Gateway, exec_id: str) -> None:
    text = client(gateway, exec_id).audio.translations.create(
        model="whisper-1", file=("speech.wav", wav_file(3.0), "audio/wav"))
    assert text.text
    forwarded(gateway, "openai", "/v1/audio/translations")
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("openai", "whisper-1", "audio.translations")
    assert record["seconds"] == pytest.approx(3.0)
    assert record["cost_usd"] == pytest.approx(3.0 / 60 * 0.006, abs=MICRO)


# --- Mistral FIM (genai-prices codestral: $0.3/1M input, $0.9/1M output) ----------------------------------------


def test_mistral_fim_priced_as_codestral_tokens(gateway: Gateway, exec_id: str) -> None:
    headers = {"authorization": f"Bearer {gateway.key}", "x-execution-id": exec_id}
    r = httpx.post(f"{gateway.url}/v1/fim/completions", headers=headers, timeout=30,
                   json={"model": "codestral-latest", "prompt": "def add(a, b):", "suffix": "return c"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["message"]["content"] and answer["usage"]["prompt_tokens"] == 5
    forwarded(gateway, "mistral", "/v1/fim/completions")
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == \
        ("mistral", "codestral-latest", "fim.completions")
    usage = answer["usage"]
    assert (record["input_tokens"], record["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert record["cost_usd"] == pytest.approx(usage["prompt_tokens"] * 0.3e-6 + usage["completion_tokens"] * 0.9e-6,
                                               abs=MICRO)


def test_mistral_fim_streamed_metered_from_the_last_chunk(gateway: Gateway, exec_id: str) -> None:
    headers = {"authorization": f"Bearer {gateway.key}", "x-execution-id": exec_id}
    usage = None
    with httpx.stream("POST", f"{gateway.url}/v1/fim/completions", headers=headers, timeout=30,
                      json={"model": "codestral-latest", "prompt": "def add(a, b):", "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    assert usage is not None, "Mistral's usage on the last chunk reaches the client"
    assert "stream_options" not in forwarded(gateway, "mistral", "/v1/fim/completions")["body"]
    record = one_record(gateway, exec_id)
    assert (record["endpoint"], record["input_tokens"], record["output_tokens"]) == \
        ("fim.completions", usage["prompt_tokens"], usage["completion_tokens"])
    assert record["cost_usd"] == pytest.approx(usage["prompt_tokens"] * 0.3e-6 + usage["completion_tokens"] * 0.9e-6,
                                               abs=MICRO)


def test_model_list_names_the_long_tails_models_and_their_pricing(gateway: Gateway) -> None:
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {gateway.key}"}).json()
    pricing = {m["id"]: m.get("pricing") for m in listed["data"]}
    assert pricing["omni-moderation-latest"] == "free"
    assert pricing["gpt-3.5-turbo-instruct"] == "catalog"
    assert pricing["dall-e-2"] == "media" and "whisper-1" in pricing
    assert any(m.startswith("codestral") for m in pricing)


# --- reprice: the recorded flows priced again give what live metering recorded ---------------------------------


def test_reprice_of_the_long_tail_equals_the_recorded_cost(tmp_path: Path, fake_provider: FakeProvider) -> None:
    record_file = tmp_path / "calls.flows"
    gw = start_gateway(tmp_path, fake_provider, serve_args=["--record", str(record_file)])
    exec_id = f"lt-{uuid.uuid4().hex[:8]}"
    calls = {
        "completions": lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon", max_tokens=3),
        "completions-stream": lambda c: list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi",
                                                                  stream=True)),
        "moderations": lambda c: c.moderations.create(input="hello"),
        "edit-gpt-image": lambda c: c.images.edit(model="gpt-image-1", image=png(), prompt="Add a hat"),
        "edit-dall-e-2": lambda c: c.images.edit(model="dall-e-2", image=png(), prompt="Add a hat", size="512x512"),
        "variation": lambda c: c.images.create_variation(model="dall-e-2", image=png(), n=2, size="256x256"),
        "translation": lambda c: c.audio.translations.create(model="whisper-1",
                                                             file=("a.wav", wav_file(2.0), "audio/wav")),
        "fim": lambda c: c.post("/fim/completions", cast_to=object,
                                body={"model": "codestral-latest", "prompt": "def f():", "suffix": "return 1"}),
    }
    try:
        for workflow, call in calls.items():
            call(openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0,
                               default_headers={"x-execution-id": exec_id, "x-workflow-tag": workflow}))
        records = {r["workflow"]: r for r in gw.wait_records(len(calls), execution_id=exec_id)}
    finally:
        stop(gw.process)  # SIGTERM: the recording is complete afterwards
    assert set(records) == set(calls)
    assert records["moderations"]["cost_usd"] == 0
    assert all(r["cost_usd"] is not None and r["cost_usd"] >= 0 for r in records.values())
    reprice = json.loads(gw.cli("reprice", str(record_file), "--json").stdout)
    groups = {g["workflow"]: g for g in reprice["by_workflow"]}
    for workflow, record in records.items():
        assert groups[workflow]["requests"] == 1
        assert groups[workflow]["cost_usd"] == pytest.approx(record["cost_usd"], abs=1e-9), workflow
    assert reprice["total"]["unpriced"] == 0


def test_uploads_of_edits_and_translations_have_the_upload_limit(tmp_path: Path, fake_provider: FakeProvider) -> None:
    gw = start_gateway(tmp_path, fake_provider, extra_env={"TOKENSENSE_MAX_UPLOAD_MB": "1"})
    try:
        before = len(gw.fake.requests())
        big = io.BytesIO(media.png_bytes(64, 64) + b"\0" * 1_300_000)
        big.name = "big.png"
        sdk = client(gw, "lt-upload")
        with pytest.raises(openai.APIStatusError) as edit:
            sdk.images.edit(model="gpt-image-1", image=big, prompt="Add a hat")
        assert edit.value.status_code == 413 and "TOKENSENSE_MAX_UPLOAD_MB" in str(edit.value)
        with pytest.raises(openai.APIStatusError) as translation:
            sdk.audio.translations.create(model="whisper-1", file=("long.wav", wav_file(45.0), "audio/wav"))
        assert translation.value.status_code == 413
        assert len(gw.fake.requests()) == before
        assert sdk.audio.translations.create(model="whisper-1", file=("a.wav", wav_file(1.0), "audio/wav")).text
    finally:
        stop(gw.process)


def test_a_model_on_another_providers_path_is_a_400_that_never_leaves(gateway: Gateway) -> None:
    before = len(gateway.fake.requests())
    headers = {"authorization": f"Bearer {gateway.key}"}
    fim = httpx.post(f"{gateway.url}/v1/fim/completions", headers=headers, json={"model": "gpt-4o-mini", "prompt": "x"})
    assert fim.status_code == 400 and fim.json()["error"]["code"] == "unsupported_model_for_endpoint"
    with pytest.raises(openai.BadRequestError) as e:
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0).completions.create(
            model="codestral-latest", prompt="x")
    assert "codestral-latest" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0).images.create_variation(
            model="gpt-image-1", image=png())
    assert len(gateway.fake.requests()) == before
