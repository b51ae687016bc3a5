"""`gptforge finetune`: Fine-tune a model on instruction or chat records, all its weights or LoRA
adapters (--lora-rank), with the loss on the answers only. Settings come from the defaults, then
--config, then the flags. The run folder gets metrics.jsonl, loss.png, checkpoints and, at the
end, responses.jsonl (the model's answer to every val example beside the reference)."""

from __future__ import annotations

from ..errors import UserError
from .common import add_config_flags, config_flags

NAME = "finetune"
HELP = "fine-tune a model on instruction or chat data (full or LoRA)"


def add_arguments(p) -> None:
    from ..config import FinetuneConfig

    p.add_argument("--config", metavar="FILE",
                   help="TOML file of settings, or a bundled one: tasks-lora, tasks-full")
    p.add_argument("--resume", metavar="RUN",
                   help="continue RUN from its newest intact checkpoint, with its own config")
    add_config_flags(p, FinetuneConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..config import FinetuneConfig, load_config_file
    from ..training.finetune import finetune

    flags = config_flags(args, FinetuneConfig)
    progress = False if args.no_progress else None
    if args.resume:
        if args.config:
            raise UserError("--resume takes the run's own config; drop --config")
        finetune(resume=args.resume, progress=progress, **flags)
        return 0
    settings = load_config_file(args.config, FinetuneConfig) if args.config else {}
    finetune(FinetuneConfig.from_dict({**settings, **flags}), progress=progress)
    return 0
