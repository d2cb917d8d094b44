"""The shared vocabulary of TokenSense: endpoints, errors, usage, path helpers. Imports nothing of ours."""
