"""/v1/embeddings (OpenAI's request and response shape): each input's vector, the served model's
final hidden states mean-pooled over its tokens and scaled to length 1 (retrieval/embed.py), as a
list of floats or, with encoding_format "base64", the little-endian float32 bytes in base64."""

from __future__ import annotations

import base64

from ..retrieval.embed import BATCH, pooled_states, unit_rows
from ..tokenizer import tokenizer_of
from .protocol import ApiError, EmbeddingRequest, parse

MAX_INPUTS = 2048  # as OpenAI


def input_ids(service, req: EmbeddingRequest) -> list[list[int]]:
    """Each input as token ids: text encoded as plain text, ids checked against the vocabulary;
    each must be non-empty and fit the model's context."""
    raw = req.input
    if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw:
        raise ApiError(400, "input must not be an empty list", param="input")
    if len(raw) > MAX_INPUTS:
        raise ApiError(400, f"at most {MAX_INPUTS} inputs per request, got {len(raw)}", param="input")
    tokenizer, vocab = tokenizer_of(service.model), service.model.config.vocab_size
    rows = []
    for i, item in enumerate(raw):
        ids = tokenizer.encode(item) if isinstance(item, str) else item
        if not ids:
            raise ApiError(400, f"input {i} is empty", param="input")
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"input {i} holds a token id outside the vocabulary (0 to {vocab - 1})", param="input")
        if len(ids) > service.context:
            raise ApiError(400, f"input {i} has {len(ids)} tokens; this model's context is {service.context}",
                           param="input", code="context_length_exceeded")
        rows.append(list(ids))
    return rows


def embeddings(service, body: bytes) -> dict:
    """The response to a /v1/embeddings body (CPU work: the caller runs it in a worker thread)."""
    req = parse(EmbeddingRequest, body)
    service.check_model(req.model)
    rows = input_ids(service, req)
    data = []
    for start in range(0, len(rows), BATCH):
        vectors = unit_rows(pooled_states(service.model, rows[start:start + BATCH]))
        for i, vector in enumerate(vectors, start):
            value = (base64.b64encode(vector.astype("<f4").tobytes()).decode() if req.encoding_format == "base64"
                     else vector.tolist())
            data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(r) for r in rows)
    return {"object": "list", "data": data, "model": service.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
