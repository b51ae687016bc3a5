"""Embedders: texts -> unit-length vectors (float32, (n, dim)), for an index's vector search and
the server's /v1/embeddings.

- our own model (a checkpoint, run or Hugging Face folder): the final hidden states (after the final
  norm) averaged over the text's real tokens (padding left out); always available.
- any OpenAI-compatible embeddings URL (`http(s)://HOST/v1`, e.g. `gptforge serve` or llama.cpp):
  POST /embeddings, with $GPTFORGE_EMBEDDER_KEY as its bearer key when set.
- a sentence-transformers model from a local folder (`st:FOLDER`), when that package is installed;
  never downloaded.

Each says who it is in a record ({"kind", "source", ...}) that an index keeps: its vectors are only
comparable with the same embedder's, so an index refuses another one.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import UserError

KEY_VARIABLE = "GPTFORGE_EMBEDDER_KEY"
BATCH = 16  # texts per forward pass or request


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero): a dot product is then the cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def pooled_states(model, rows: list[list[int]]) -> np.ndarray:
    """(n, emb_dim) float32: each row of ids' final hidden states (after the final norm) averaged
    over its tokens. Rows are right-padded into one batch: a causal model's real positions never
    see the padding, and the mean leaves it out. Each row must fit the model's context."""
    import torch

    device = next(model.parameters()).device
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
    real = torch.zeros(len(rows), longest, 1, device=device)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        real[i, :len(row)] = 1
    with torch.no_grad():
        states = model.final_norm(model(ids, head=False)).float()  # (n, T, C)
        pooled = (states * real).sum(1) / real.sum(1).clamp(min=1)
    return pooled.cpu().numpy()


class ModelEmbedder:
    """Our own model's mean-pooled hidden states. Texts longer than its context are cut to it."""

    def __init__(self, model, source: str):
        from ..tokenizer import tokenizer_of

        self.model, self.tokenizer = model, tokenizer_of(model)
        self.record = {"kind": "model", "source": source}
        self.cut = 0  # texts cut to the context so far

    def embed(self, texts: list[str]) -> np.ndarray:
        context = self.model.config.context_length
        rows = [self.tokenizer.encode(t) or [self.tokenizer.eot_id] for t in texts]
        self.cut += sum(len(r) > context for r in rows)
        rows = [r[:context] for r in rows]
        out = [pooled_states(self.model, rows[i:i + BATCH]) for i in range(0, len(rows), BATCH)]
        return unit_rows(np.concatenate(out) if out else np.zeros((0, self.model.config.emb_dim)))


class URLEmbedder:
    """An OpenAI-compatible embeddings endpoint: POST {url}/embeddings {"model", "input": [...]}."""

    def __init__(self, url: str, model: str | None = None, timeout: float = 120):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.model = model or self._first_model()
        self.record = {"kind": "url", "source": self.url, "model": self.model}

    def _call(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if os.environ.get(KEY_VARIABLE):
            headers["Authorization"] = f"Bearer {os.environ[KEY_VARIABLE]}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            raise UserError(f"the embedder at {self.url} answered {e.code}: {' '.join(detail.split())}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UserError(f"cannot use the embedder at {self.url}: {getattr(e, 'reason', e)}") from None

    def _first_model(self) -> str:
        models = self._call("/models").get("data") or []
        if not models:
            raise UserError(f"the embedder at {self.url} lists no model: name one with --embedder-model")
        return models[0]["id"]

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), BATCH):
            reply = self._call("/embeddings", {"model": self.model, "input": texts[i:i + BATCH]})
            try:
                items = sorted(reply["data"], key=lambda d: d["index"])
                out.append(np.asarray([d["embedding"] for d in items], dtype=np.float32))
            except (KeyError, TypeError, ValueError):
                raise UserError(f"the embedder at {self.url} sent no embeddings list") from None
        return unit_rows(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder (the optional package; never downloaded)."""

    def __init__(self, folder: str):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise UserError("st: embedders need sentence-transformers: pip install sentence-transformers") from None
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"st:{folder}: no such folder (sentence-transformers models are read from a "
                            "local folder, never downloaded)")
        self.model = SentenceTransformer(str(path), local_files_only=True)
        self.record = {"kind": "sentence-transformers", "source": str(path)}

    def embed(self, texts: list[str]) -> np.ndarray:
        return unit_rows(self.model.encode(texts, batch_size=BATCH, convert_to_numpy=True))


def load_embedder(spec: str, model_name: str | None = None):
    """The embedder a spec names: `st:FOLDER`, an `http(s)://` URL, or a model (checkpoint, run or
    Hugging Face folder)."""
    if spec.startswith("st:"):
        return SentenceTransformerEmbedder(spec[3:])
    if spec.startswith(("http://", "https://")):
        return URLEmbedder(spec, model_name)
    from ..weights import load_any

    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"--embedder {spec}: no such model folder (or give an http(s):// URL, or st:FOLDER)")
    return ModelEmbedder(load_any(path, nonfinite="refuse"), str(path.resolve()))


def embedder_of(record: dict):
    """The embedder an index's record names (its vectors were made by it)."""
    if record["kind"] == "url":
        return load_embedder(record["source"], record.get("model"))
    if record["kind"] == "sentence-transformers":
        return load_embedder("st:" + record["source"])
    return load_embedder(record["source"])


def same_embedder(a: dict, b: dict) -> bool:
    return all(a.get(key) == b.get(key) for key in ("kind", "source", "model"))


def describe(record: dict) -> str:
    return f"{record['kind']} {record['source']}" + (f" ({record['model']})" if record.get("model") else "")
