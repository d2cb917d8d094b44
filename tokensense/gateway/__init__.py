"""The request pipeline: call model, routing, keys, policies, limits, errors, runtime."""
