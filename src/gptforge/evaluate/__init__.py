"""Evaluation: how good a model is.

    loss.py             loss, perplexity and bits per byte of text (`gptforge eval`)
    multiple_choice.py  zero-shot multiple-choice scoring: log-likelihoods, acc, acc_norm
    tasks.py            benchmark files (HellaSwag and files of its shape) read as items
"""

from .loss import (
    batch_loss,
    bits_per_byte,
    bytes_per_token,
    evaluate_path,
    evaluate_tokens,
    format_report,
    mean_loss,
    perplexity,
)

__all__ = ["batch_loss", "bits_per_byte", "bytes_per_token", "evaluate_path", "evaluate_tokens", "format_report",
           "mean_loss", "perplexity"]
