"""The demo: traffic generator and the fake providers."""
