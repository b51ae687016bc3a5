"""Training: the loop every job shares (loop.py) and the jobs that use it (pretrain.py).

    config.py      a run's settings in groups (TrainConfig, FinetuneConfig); config_files.py: TOML
    loop.py        the loop, its periodic jobs, clean stops
    step.py        one optimizer step (micro-batches, clipping, non-finite guard)
    sync.py        the loop's host syncs: divergence, agreement across ranks, throughput
    optim.py       the optimizer (AdamW, or Muon with AdamW) and the learning-rate schedule
    budget.py      the job's clock and the --max-time plan (when to sync, when to stop)
    resume.py      the exact-resume contract (position, RNG, optimizer, scaler) and run resolution
    run_folder.py  the layout of a run folder
    plot.py        loss curves of a run
    pretrain.py    `gptforge train`
    finetune.py    `gptforge finetune` (instruction and chat data, full or LoRA)
"""

from .finetune import finetune
from .loop import Diverged, Trainer, TrainResult
from .pretrain import train

__all__ = ["Diverged", "TrainResult", "Trainer", "finetune", "train"]
