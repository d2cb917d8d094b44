"""The TokenSense terminal dashboard (`tokensense dashboard`), built with Textual."""
