"""Classification: a classifier's predictions and how good they are.

`scores` gives accuracy, macro-F1 (the mean of every class's F1; a class neither present nor
predicted counts 0, as scikit-learn's zero_division=0) and the confusion matrix
(rows: the true class, columns: the predicted one). `predict` runs a classifier over texts in
batches; `evaluate_classifier` scores a checkpoint on a labeled file (`gptforge eval --task classify`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.labeled import encode_texts, label_ids, pad_batch, read_labeled
from ..errors import UserError
from ..model.classifier import Classifier
from ..tokenizer import tokenizer_of


def scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    """{"accuracy", "macro_f1", "confusion"} of predicted against true class ids."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    hits = np.diag(confusion).astype(np.float64)
    true, guessed = confusion.sum(1), confusion.sum(0)
    f1 = np.divide(2 * hits, true + guessed, out=np.zeros(n_classes), where=(true + guessed) > 0)
    return {"accuracy": float(hits.sum() / max(len(labels), 1)), "macro_f1": float(f1.mean()),
            "confusion": confusion.tolist()}


@torch.no_grad()
def predict_ids(model: Classifier, ids: list[np.ndarray], batch_size: int = 16) -> torch.Tensor:
    """(N, n_classes) probabilities of encoded texts, on the CPU, in float32."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(ids), batch_size):
        logits = model(pad_batch(ids[i:i + batch_size], model.pad_id).to(device))
        out.append(logits.float().softmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(model.classes))


def predict(model: Classifier, texts: list[str], batch_size: int = 16) -> list[dict]:
    """For each text: {"label": the most likely class, "probabilities": {class: p}}."""
    ids, _ = encode_texts(texts, tokenizer_of(model), model.config.context_length)
    probs = predict_ids(model, ids, batch_size)
    return [{"label": model.classes[int(p.argmax())],
             "probabilities": {c: round(float(q), 6) for c, q in zip(model.classes, p)}} for p in probs]


def check_classifier(model, source: str) -> Classifier:
    """`model`, refused in one line unless it is a classifier."""
    if not isinstance(model, Classifier):
        raise UserError(f"{source} is a language model, not a classifier (make one with "
                        "`gptforge finetune --task classify`)")
    return model


def evaluate_classifier(checkpoint: str, data: str, *, text_column: str | None = None,
                        label_column: str | None = None, batch_size: int = 16, device="cpu") -> dict:
    """The scores (see `scores`) of a classifier checkpoint on a labeled file, with its classes."""
    from ..weights import load_any

    model = check_classifier(load_any(checkpoint, device), checkpoint)
    records = read_labeled(data, text_column, label_column)
    labels = label_ids(records, model.classes)
    ids, _ = encode_texts([r.text for r in records], tokenizer_of(model), model.config.context_length)
    predicted = predict_ids(model, ids, batch_size).argmax(-1).numpy()
    return {"examples": len(records), "classes": model.classes, **scores(labels, predicted, len(model.classes))}


def format_scores(result: dict) -> str:
    """The scores as lines for a terminal: accuracy, macro-F1 and the confusion matrix."""
    classes = result["classes"]
    width = max(len(c) for c in classes)
    cell = max(len(str(result["examples"])), min(width, 12))
    lines = [f"examples: {result['examples']}", f"accuracy: {result['accuracy']:.4f}",
             f"macro-F1: {result['macro_f1']:.4f}", "confusion (rows: true class, columns: predicted):",
             " " * (width + 2) + " ".join(f"{c[:cell]:>{cell}}" for c in classes)]
    lines += [f"{c:>{width}}  " + " ".join(f"{n:>{cell}}" for n in row) for c, row in zip(classes, result["confusion"])]
    return "\n".join(lines)
