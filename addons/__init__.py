"""mitmproxy addons of the TokenSense gateway: one class per concern, no business logic."""
