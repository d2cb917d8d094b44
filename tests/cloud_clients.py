"""Official SDK clients for the cloud providers (Bedrock, Vertex AI, Azure OpenAI), shared by the tests.

`service_account_json(token_uri)` makes a throwaway service-account key whose
token endpoint is the fake provider's `/token`, so google-auth runs its real
JWT-bearer flow against it.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tokensense.demo.fakeprovider.bedrock_format import FAKE_AWS_KEYS

AWS_ACCESS_KEY, AWS_SECRET_KEY = next(iter(FAKE_AWS_KEYS.items()))
BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
BEDROCK_NOVA = "amazon.nova-pro-v1:0"
VERTEX_GEMINI = "gemini-2.5-flash"
VERTEX_CLAUDE = "claude-sonnet-4-5@20250929"
SERVICE_ACCOUNT_EMAIL = "tokensense-test@fake-project.iam.gserviceaccount.com"

_PRIVATE_KEY: str | None = None


def service_account_json(token_uri: str, project: str = "fake-project") -> str:
    global _PRIVATE_KEY
    if _PRIVATE_KEY is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _PRIVATE_KEY = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account",
        "project_id": project,
        "private_key_id": "fake-key-id",
        "private_key": _PRIVATE_KEY,
        "client_email": SERVICE_ACCOUNT_EMAIL,
        "client_id": "1234567890",
        "token_uri": token_uri,
    })


def bedrock_client(endpoint_url: str, **credentials: str):
    import boto3
    from botocore.config import Config

    credentials = credentials or {"aws_access_key_id": AWS_ACCESS_KEY, "aws_secret_access_key": AWS_SECRET_KEY}
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=endpoint_url,
                        config=Config(retries={"max_attempts": 1}), **credentials)
