"""Pure translations between OpenAI chat completions and other providers' chat formats (SPEC §5).

`anthropic` and `gemini` each expose the same five names (`chat_request_to_provider`,
`chat_response_from_provider`, `ChatStreamTranslator`, `error_from_provider`,
`usage_to_openai`); `openai_format` holds what both build on. Nothing here does I/O.
"""

from __future__ import annotations


class TranslationError(ValueError):
    """A request that cannot be expressed in the provider's format: the gateway answers 400.

    `param` names the offending request field the way OpenAI does in its own 400s
    (`"n"`, `"messages[2].content[1].type"`), or is None when no single field is at fault;
    `code` is OpenAI's `unsupported_parameter` for a field the provider has no place for.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def openai_error(self) -> dict:
        """The OpenAI error body for this failure (the gateway sends it with status 400)."""
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }
