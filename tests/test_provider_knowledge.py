"""Issue 22: the pipeline asks the providers what it knows about them, a toy provider's answers are used.

Model-list shapes, output caps for reservations, media rules, non-SSE stream framings and key schemes are
contributed by the providers (`Provider` hooks in providers/base.py); a provider registered from a test
module, which the gateway's code has never heard of, is asked like the built-in ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest
from mitmproxy.test import tflow

from addons.common import CALL
from addons.media import MEDIA, Media, MediaCall
from addons.metering import Metering
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway import media
from tokensense.gateway.auth import client_key
from tokensense.gateway.call import CallContext
from tokensense.gateway.model_lists import served_in, shape_for, shapes
from tokensense.gateway.reservation import DEFAULT_MAX_OUTPUT_TOKENS, call_reservation, model_max_output
from tokensense.gateway.runtime import Runtime
from tokensense.providers import ALIASES, PROVIDERS, get_provider, register
from tokensense.providers.anthropic import ANTHROPIC_ERRORS
from tokensense.providers.base import MediaRoute, Provider, StreamUsage
from tokensense.providers.model_lists import ListedModel, ModelListShape
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.settings import Settings


class ToyStreamUsage(StreamUsage):
    def __init__(self) -> None:
        self.frames = 0

    def feed(self, event: str | None, data: dict) -> None:
        pass

    def result(self) -> TokenUsage:
        return TokenUsage(output_tokens=self.frames)


class ToyModelList(ModelListShape):
    error_format: ClassVar[ErrorShape] = ANTHROPIC_ERRORS
    api: ClassVar[Endpoint | None] = Endpoint.EMBEDDINGS
    marker_headers: ClassVar[tuple[str, ...]] = ("x-toy-sdk",)

    def entry(self, model: ListedModel) -> dict:
        return {"toy": model.id}

    def listing(self, models: list[ListedModel], query: Mapping[str, str]) -> dict:
        return {"toys": [self.entry(m) for m in models]}


TOY_LIST = ToyModelList()


def toy_image_check(model: str, body: dict) -> None:
    if body.get("size") != "toy":
        raise GatewayError(400, "toys are toy-sized", code="invalid_value", param="size")


def toy_image_usage(answer: Any) -> TokenUsage:
    return TokenUsage(images=len(answer["pictures"]), output_tokens=answer["cost"])


def toy_framing(usage: StreamUsage, *, on_first: Callable[[], None] | None = None) -> Callable[[bytes], bytes]:
    def passthrough(data: bytes) -> bytes:
        assert isinstance(usage, ToyStreamUsage)
        usage.frames += data.count(b"|")
        return data
    return passthrough


class ToyProvider(Provider):
    name: ClassVar[str] = "toy"
    display_name: ClassVar[str] = "Toy"
    default_base_url: ClassVar[str] = "http://127.0.0.1:9"
    env_key: ClassVar[str] = "TOY_KEY"
    prices_id: ClassVar[str] = "toy"
    model_prefixes: ClassVar[tuple[str, ...]] = ("toy-",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.EMBEDDINGS, Endpoint.IMAGES})
    accepts_any_model: ClassVar[bool] = True
    output_caps: ClassVar[Mapping[str, int]] = {"toy-": 1_000, "toy-big": 9_000}

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Toy {api_key}"}

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return None

    def stream_usage(self) -> StreamUsage:
        return ToyStreamUsage()

    def model_list_shape(self) -> ModelListShape | None:
        return TOY_LIST

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.IMAGES and model.startswith("toy-img"):
            return MediaRoute("images", "/toy/images", check=toy_image_check, answer_usage=toy_image_usage)
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return "Toy toy-img*" if endpoint is Endpoint.IMAGES else None

    def client_key_in(self, authorization: str) -> str | None:
        scheme, _, rest = authorization.partition(" ")
        return rest.partition(";")[0] if scheme == "TOY-SIGNED" else None

    def stream_framing(self, content_type: bytes) -> Callable[..., Any] | None:
        return toy_framing if content_type.startswith(b"application/x-toy-frames") else None


@pytest.fixture
def toy() -> Iterator[ToyProvider]:
    provider = register(ToyProvider())
    try:
        yield provider
    finally:
        PROVIDERS.pop(provider.name, None)
        for alias in provider.aliases:
            ALIASES.pop(alias, None)


def test_reservation_asks_the_serving_provider_for_its_output_cap(toy: ToyProvider) -> None:
    assert model_max_output("toy-small", toy) == 1_000
    assert model_max_output("toy/toy-big-2", toy) == 9_000  # the longest prefix, `provider/` left out
    call = CallContext(Endpoint.EMBEDDINGS, OPENAI_ERRORS)
    call.route_endpoint = Endpoint.CHAT
    call.provider, call.model = toy, "toy-big-1"
    reservation = call_reservation(call, {"messages": [{"role": "user", "content": "hi"}]})
    assert reservation.output_tokens == 9_000
    PROVIDERS.pop("toy")  # unregistered: nobody knows the family
    assert model_max_output("toy-big-1") == DEFAULT_MAX_OUTPUT_TOKENS


def test_a_model_served_by_another_provider_takes_its_familys_cap() -> None:
    """Vertex AI serving Claude, Azure serving a GPT deployment: the family's provider knows the cap."""
    assert model_max_output("claude-opus-4-1", get_provider("vertex")) == 32_000
    assert model_max_output("gpt-4o", get_provider("azure")) == 16_384
    assert model_max_output("grok-4", get_provider("xai")) == 131_072
    assert get_provider("anthropic").max_output_tokens("claude-opus-4-5-20251101") == 64_000


def test_model_list_shape_of_a_toy_provider_is_picked_by_its_header(toy: ToyProvider) -> None:
    assert TOY_LIST in shapes()
    shape = shape_for("/v1/models", {"x-toy-sdk": "1"})
    assert shape is TOY_LIST and shape.error_format is ANTHROPIC_ERRORS
    models = [ListedModel("toy-1", "toy", "Toy 1", None), ListedModel("claude-sonnet-4-5", "anthropic", "Claude", None)]
    assert shape.listing(served_in(shape, models), {}) == {"toys": [{"toy": "toy-1"}]}  # its API's models only
    assert shape_for("/v1/models", {}) is get_provider("openai").model_list_shape()


def test_media_request_is_checked_by_the_providers_rule(toy: ToyProvider) -> None:
    addon = Media(Runtime(Settings()))
    addon.running()
    flow = tflow.tflow()
    flow.request.path = "/v1/images/generations"
    flow.request.content = json.dumps({"model": "toy-img-1", "prompt": "x", "size": "huge"}).encode()
    call = CallContext(Endpoint.IMAGES, OPENAI_ERRORS)
    call.key = object()  # type: ignore[assignment]
    call.attribution = {"project": None}
    flow.metadata[CALL] = call
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 400
    assert json.loads(flow.response.content)["error"]["param"] == "size"


def test_media_answer_is_metered_by_the_providers_reader(toy: ToyProvider) -> None:
    route = media.media_route(Endpoint.IMAGES.value, "toy", "toy-img-1")
    addon = Media(Runtime(Settings()))
    flow = tflow.tflow(resp=True)
    flow.response.content = json.dumps({"pictures": ["a", "b"], "cost": 7}).encode()
    call = CallContext(Endpoint.IMAGES, OPENAI_ERRORS)
    call.provider, call.model = toy, "toy-img-1"
    flow.metadata[CALL] = call
    flow.metadata[MEDIA] = MediaCall(route.kind, route.images, route.answer_usage, route.audio)
    addon.response(flow)
    assert call.usage == TokenUsage(images=2, output_tokens=7)


def test_media_refusal_names_what_each_provider_serves(toy: ToyProvider) -> None:
    with pytest.raises(GatewayError) as e:
        media.media_route(Endpoint.IMAGES.value, "anthropic", "claude-sonnet-4-5")
    assert e.value.status == 400 and "Toy toy-img*" in e.value.message and "fal-ai/*" in e.value.message


def test_a_providers_key_scheme_gives_the_tokensense_key(toy: ToyProvider) -> None:
    assert client_key({"authorization": "TOY-SIGNED tsk_abc;sig=1"}, {}) == "tsk_abc"
    assert client_key({"authorization": "Bearer tsk_x"}, {}) == "tsk_x"
    sigv4 = ("AWS4-HMAC-SHA256 Credential=tsk_aws/20250101/us-east-1/bedrock/aws4_request, "
             "SignedHeaders=host, Signature=" + "0" * 64)
    assert client_key({"authorization": sigv4}, {}) == "tsk_aws"


def test_a_providers_stream_framing_is_passed_through_and_read(toy: ToyProvider) -> None:
    addon = Metering(Runtime(Settings()))
    flow = tflow.tflow(resp=True)
    flow.response.headers["content-type"] = "application/x-toy-frames"
    call = CallContext(Endpoint.EMBEDDINGS, OPENAI_ERRORS)
    call.provider, call.model = toy, "toy-1"
    flow.metadata[CALL] = call
    addon.responseheaders(flow)
    assert call.stream and flow.response.stream is not None
    assert flow.response.stream(b"a|b|") == b"a|b|"
    assert call.stream_usage is not None and call.stream_usage.result().output_tokens == 2
