"""The client-facing endpoints TokenSense serves (a leaf module: providers and routing both use it)."""

from __future__ import annotations

from typing import ClassVar


class Endpoint(str):
    """One client-facing endpoint, by the id usage records store (`chat.completions`, `messages`, ...).

    The endpoints shared by several providers are the class attributes below. A
    provider whose API has an endpoint of its own defines it in its own package
    (`NATIVE = Endpoint("...")`) and names it in its routes; the id is what its
    records carry, so it must never change once records exist. Equal ids are one
    object: `Endpoint("messages") is Endpoint.MESSAGES`, so `is` compares them.
    """

    __slots__ = ()
    _known: ClassVar[dict[str, Endpoint]] = {}

    def __new__(cls, value: str) -> Endpoint:
        known = cls._known.get(value)
        if known is None:
            known = cls._known[value] = super().__new__(cls, value)
        return known

    def __reduce__(self) -> tuple[type[Endpoint], tuple[str]]:
        return Endpoint, (str(self),)

    def __copy__(self) -> Endpoint:
        return self

    def __deepcopy__(self, memo: object) -> Endpoint:
        return self

    @property
    def value(self) -> str:
        """The id as a plain string (as records store it)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Endpoint({str.__repr__(self)})"

    CHAT: ClassVar[Endpoint]
    EMBEDDINGS: ClassVar[Endpoint]
    MESSAGES: ClassVar[Endpoint]
    COUNT_TOKENS: ClassVar[Endpoint]
    IMAGES: ClassVar[Endpoint]
    SPEECH: ClassVar[Endpoint]
    TRANSCRIPTIONS: ClassVar[Endpoint]
    TRANSLATIONS: ClassVar[Endpoint]
    IMAGE_EDITS: ClassVar[Endpoint]
    IMAGE_VARIATIONS: ClassVar[Endpoint]
    COMPLETIONS: ClassVar[Endpoint]
    MODERATIONS: ClassVar[Endpoint]
    OCR: ClassVar[Endpoint]
    MODELS: ClassVar[Endpoint]
    MODEL: ClassVar[Endpoint]
    RESPONSES: ClassVar[Endpoint]
    RESPONSES_RETRIEVE: ClassVar[Endpoint]
    RESPONSES_DELETE: ClassVar[Endpoint]
    RESPONSES_CANCEL: ClassVar[Endpoint]
    RESPONSES_INPUT_ITEMS: ClassVar[Endpoint]
    RESPONSES_INPUT_TOKENS: ClassVar[Endpoint]
    RESPONSES_COMPACT: ClassVar[Endpoint]
    FILES_UPLOAD: ClassVar[Endpoint]
    FILES_LIST: ClassVar[Endpoint]
    FILES_RETRIEVE: ClassVar[Endpoint]
    FILES_DELETE: ClassVar[Endpoint]
    FILES_CONTENT: ClassVar[Endpoint]
    BATCHES_CREATE: ClassVar[Endpoint]
    BATCHES_LIST: ClassVar[Endpoint]
    BATCHES_RETRIEVE: ClassVar[Endpoint]
    BATCHES_CANCEL: ClassVar[Endpoint]
    BATCHES_RESULTS: ClassVar[Endpoint]
    BATCHES_DELETE: ClassVar[Endpoint]
    BATCH: ClassVar[Endpoint]
    HEALTH: ClassVar[Endpoint]
    REQUEST_RECORD: ClassVar[Endpoint]
    UNKNOWN: ClassVar[Endpoint]


Endpoint.CHAT = Endpoint("chat.completions")
Endpoint.EMBEDDINGS = Endpoint("embeddings")
Endpoint.MESSAGES = Endpoint("messages")
Endpoint.COUNT_TOKENS = Endpoint("messages.count_tokens")
Endpoint.IMAGES = Endpoint("images.generations")
Endpoint.SPEECH = Endpoint("audio.speech")
Endpoint.TRANSCRIPTIONS = Endpoint("audio.transcriptions")
Endpoint.TRANSLATIONS = Endpoint("audio.translations")  # speech in any language to English text (whisper-1)
Endpoint.IMAGE_EDITS = Endpoint("images.edits")
Endpoint.IMAGE_VARIATIONS = Endpoint("images.variations")
Endpoint.COMPLETIONS = Endpoint("completions")  # legacy text completions (`/v1/completions`)
Endpoint.MODERATIONS = Endpoint("moderations")
Endpoint.OCR = Endpoint("ocr")  # document OCR, priced per page processed (Mistral's `/v1/ocr`)
Endpoint.MODELS = Endpoint("models")
Endpoint.MODEL = Endpoint("models.retrieve")
Endpoint.RESPONSES = Endpoint("responses")
Endpoint.RESPONSES_RETRIEVE = Endpoint("responses.retrieve")
Endpoint.RESPONSES_DELETE = Endpoint("responses.delete")
Endpoint.RESPONSES_CANCEL = Endpoint("responses.cancel")
Endpoint.RESPONSES_INPUT_ITEMS = Endpoint("responses.input_items")
Endpoint.RESPONSES_INPUT_TOKENS = Endpoint("responses.input_tokens")
Endpoint.RESPONSES_COMPACT = Endpoint("responses.compact")
# Batch jobs and their files (addons/batches.py): the calls that manage them, and `batch`, the records of their lines.
Endpoint.FILES_UPLOAD = Endpoint("files.upload")
Endpoint.FILES_LIST = Endpoint("files.list")
Endpoint.FILES_RETRIEVE = Endpoint("files.retrieve")
Endpoint.FILES_DELETE = Endpoint("files.delete")
Endpoint.FILES_CONTENT = Endpoint("files.content")
Endpoint.BATCHES_CREATE = Endpoint("batches.create")
Endpoint.BATCHES_LIST = Endpoint("batches.list")
Endpoint.BATCHES_RETRIEVE = Endpoint("batches.retrieve")
Endpoint.BATCHES_CANCEL = Endpoint("batches.cancel")
Endpoint.BATCHES_RESULTS = Endpoint("batches.results")
Endpoint.BATCHES_DELETE = Endpoint("batches.delete")
Endpoint.BATCH = Endpoint("batch")  # one line of a batch job, booked when the job ended
Endpoint.HEALTH = Endpoint("health")
Endpoint.REQUEST_RECORD = Endpoint("tokensense.request")  # GET /v1/tokensense/requests/{id}: a call's usage record
Endpoint.UNKNOWN = Endpoint("unknown")


# The Responses API routes that name a stored response in the path (`/v1/responses/{id}[/...]`).
RESPONSE_ID_ENDPOINTS = frozenset({
    Endpoint.RESPONSES_RETRIEVE, Endpoint.RESPONSES_DELETE, Endpoint.RESPONSES_CANCEL, Endpoint.RESPONSES_INPUT_ITEMS,
})
# Every Responses API route (handled by addons/responses.py).
RESPONSES_ENDPOINTS = RESPONSE_ID_ENDPOINTS | {
    Endpoint.RESPONSES, Endpoint.RESPONSES_INPUT_TOKENS, Endpoint.RESPONSES_COMPACT,
}

# Every batch and file route (handled by addons/batches.py).
FILE_ENDPOINTS = frozenset({
    Endpoint.FILES_UPLOAD, Endpoint.FILES_LIST, Endpoint.FILES_RETRIEVE, Endpoint.FILES_DELETE, Endpoint.FILES_CONTENT,
})
BATCH_ENDPOINTS = FILE_ENDPOINTS | {
    Endpoint.BATCHES_CREATE, Endpoint.BATCHES_LIST, Endpoint.BATCHES_RETRIEVE, Endpoint.BATCHES_CANCEL,
    Endpoint.BATCHES_RESULTS, Endpoint.BATCHES_DELETE,
}

# Endpoints whose body is a multipart upload (audio, images, files): limited by TOKENSENSE_MAX_UPLOAD_MB, not the
# body limit.
UPLOAD_ENDPOINTS = frozenset({
    Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS, Endpoint.IMAGE_EDITS, Endpoint.IMAGE_VARIATIONS,
    Endpoint.FILES_UPLOAD,
})
# Endpoints whose OpenAI-format streams report usage only when asked (`stream_options.include_usage`).
USAGE_ON_REQUEST_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})
