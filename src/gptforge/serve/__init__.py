"""Serving a model: the continuous-batching engine (engine.py), the OpenAI-compatible HTTP API and
the web chat page (app.py, protocol.py, static/)."""
