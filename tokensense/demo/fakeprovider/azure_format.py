"""Azure OpenAI: OpenAI's chat and embeddings formats on deployment and `/openai/v1/` paths, keyed by `api-key`.

- `POST /openai/deployments/{deployment}/chat/completions?api-version=...` (and
  `/embeddings`): the body has no `model`; the answer names the deployment as its model.
- `POST /openai/v1/chat/completions` (and `/embeddings`): `model` names the deployment.

The key goes in the `api-key` header (or `Authorization: Bearer` for Entra ID
tokens). Deployment paths without `api-version` are a 404, as on Azure.
"""

from __future__ import annotations

import dataclasses

from tokensense.demo.fakeprovider import openai_format
from tokensense.demo.fakeprovider.replies import FakeError, FakeRequest, Reply

NAME = "azure"
MISSING_KEY = ("Access denied due to missing subscription key. Make sure to include subscription key when making "
               "requests to an API.")
error = openai_format.error


def authenticated(req: FakeRequest) -> bool:
    if req.headers.get("api-key", "").strip():
        req.params["auth"] = "api-key"
        return True
    auth = req.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        req.params["auth"] = "bearer"
        return True
    return False


def _with_deployment(req: FakeRequest) -> FakeRequest:
    deployment = req.params.get("deployment")
    if deployment is None:
        return req
    if not req.query.get("api-version"):
        raise FakeError(404, "Resource not found")
    if not isinstance(req.body, dict):
        return req
    return dataclasses.replace(req, body={**req.body, "model": deployment})


def chat(req: FakeRequest) -> Reply:
    return openai_format.chat(_with_deployment(req))


def embeddings(req: FakeRequest) -> Reply:
    return openai_format.embeddings(_with_deployment(req))


OPERATIONS = {"chat/completions": chat, "embeddings": embeddings}
