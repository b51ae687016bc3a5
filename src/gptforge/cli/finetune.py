"""`gptforge finetune`: Fine-tune a model on instruction or chat records, all its weights or LoRA
adapters (--lora-rank), with the loss on the answers only. Settings come from the defaults, then
--config, then the flags. The run folder gets metrics.jsonl, loss.png, checkpoints and, at the
end, responses.jsonl (the model's answer to every val example beside the reference). With --task
classify: a classifier of labeled texts instead (docs/classify.md)."""

from __future__ import annotations

from .common import add_run_arguments, run_job

NAME = "finetune"
HELP = "fine-tune a model on instruction or chat data (full or LoRA)"


def add_arguments(p) -> None:
    from ..training.config import FinetuneConfig

    add_run_arguments(p, FinetuneConfig, "tasks-lora, tasks-full, tools-cpu, dpo-cpu, classify-cpu")


def run(args) -> int:
    from ..training.config import FinetuneConfig
    from ..training.finetune import finetune

    return run_job(args, FinetuneConfig, finetune)
