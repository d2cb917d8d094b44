"""Usage, SSE streams, pricing and the usage record writer."""
