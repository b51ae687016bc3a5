"""What the commands share: the parser class, flags generated from a config dataclass, --device."""

from __future__ import annotations

import argparse
import typing
from typing import Literal

from ..config import base_type
from ..errors import one_line


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2) instead of the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        # argparse before Python 3.12 drops a value of exactly "--" (`--temperature=--`) and hands
        # the command an empty list where one value belongs: convert and check it like any value.
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per setting of a run config (training.config): --setting-name, its docstring as
    help, a Literal's values as choices, --x/--no-x for booleans. Unset flags are absent from the
    parsed args, so they never override a config file."""
    defaults = cls().to_dict()
    for name, setting in cls.settings().items():
        flag = "--" + name.replace("_", "-")
        kind = base_type(setting.hint)
        default = defaults[name]
        if default in (None, ()):
            default = " (default: the model's)" if setting.group == "model" else ""
        else:
            default = f" (default: {default})"
        kwargs = dict(dest=name, default=argparse.SUPPRESS, help=setting.doc + default)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), **kwargs)
        elif typing.get_origin(kind) is tuple:  # tuple[Literal[...], ...]: the flag repeats
            choices = typing.get_args(typing.get_args(kind)[0])
            parser.add_argument(flag, action="append", choices=choices, **kwargs)
        else:
            parser.add_argument(flag, type=kind, metavar=name.split("_")[-1].upper(), **kwargs)


def config_flags(args: argparse.Namespace, cls) -> dict:
    """The settings the user set on the command line."""
    names = cls.settings()
    return {k: v for k, v in vars(args).items() if k in names}


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """How INPUTs other than plain text files are read (see gptforge.text.sources.SourceOptions)."""
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="column with the text in .jsonl / .parquet files and hf: datasets (default: text)")
    p.add_argument("--hf-split", default="train", metavar="NAME",
                   help="split of an hf: dataset to read (default: train)")
    p.add_argument("--gutenberg-top", type=int, default=0, metavar="N",
                   help="also take the first N books of Project Gutenberg's popular list")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="Project Gutenberg site or mirror for gutenberg: books (default: https://www.gutenberg.org)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where downloads are kept (default: ~/.cache/gptforge)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries of a download after a server error or dropped connection (default: 3)")


def source_options(args: argparse.Namespace):
    """The SourceOptions of the flags add_source_flags added."""
    from ..text import SourceOptions

    options = SourceOptions(text_field=args.text_field, hf_split=args.hf_split, cache_dir=args.cache_dir,
                            retries=args.retries, gutenberg_top=args.gutenberg_top)
    if args.mirror:
        options.mirror = args.mirror
    return options


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def add_quantize(parser: argparse.ArgumentParser) -> None:
    from ..model.quantize import QUANTIZATIONS

    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="int8: int8 weights and activations in every linear layer, on a CPU in float32 "
                             "(faster decoding, a quarter of the linear weights' memory, slightly different "
                             "logits; docs/generate.md)")


def add_run_arguments(parser: argparse.ArgumentParser, cls, bundled: str) -> None:
    """What a training command takes: --config (a file or one of the `bundled` configs),
    --resume, one flag per field of `cls`, --no-progress."""
    parser.add_argument("--config", metavar="FILE", help=f"TOML file of settings, or a bundled one: {bundled}")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue RUN from its newest intact checkpoint, with its own config")
    add_config_flags(parser, cls)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_job(args: argparse.Namespace, cls, job, default_settings=None) -> int:
    """Start a training job (`job(config, progress=..., started=...)`, e.g. training.train) with the
    settings of the defaults, then --config (else default_settings(flags), when given), then the flags;
    or resume one (`job(resume=RUN, ...)`) with its own config and the flags that may change."""
    from ..errors import UserError
    from ..training.budget import process_start
    from ..training.config_files import load_config_file

    started = process_start()  # a --max-time budget covers Python's and torch's start-up too
    flags = config_flags(args, cls)
    progress = False if args.no_progress else None
    if args.resume:
        if args.config:
            raise UserError("--resume takes the run's own config; drop --config")
        job(resume=args.resume, progress=progress, started=started, **flags)
        return 0
    if args.config:
        settings = load_config_file(args.config, cls)
    else:
        settings = default_settings(flags) if default_settings else {}
    job(cls.from_dict({**settings, **flags}), progress=progress, started=started)
    return 0


def add_model_source(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """--checkpoint PATH, or --preset NAME --random-init (seeded by --seed)."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", "--hf", dest="checkpoint", metavar="PATH",
                     help="checkpoint folder, run folder, Hugging Face GPT-2 folder, or a hub id when "
                          "online (--hf is another name for it)")
    src.add_argument("--preset", metavar="NAME", help="model preset (with --random-init)")
    parser.add_argument("--random-init", action="store_true",
                        help="use randomly initialised weights for --preset (seeded by --seed)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help=seed_help)
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load weights that hold NaN or inf (refused by default: such a model's "
                             "output is garbage)")


def model_from_args(args: argparse.Namespace, dtype: str = "float32"):
    """The model add_model_source's flags name, ready to decode."""
    from ..errors import UserError
    from ..generate import check_seed, model_for_generation

    check_seed(args.seed, "--seed")  # it seeds --random-init's weights before any sampling
    if args.preset and not args.random_init:
        raise UserError("--preset needs --random-init (trained weights come from --checkpoint)")
    if args.random_init and not args.preset:
        raise UserError("--random-init needs --preset NAME")
    return model_for_generation(args.checkpoint, args.preset, args.seed, args.device, dtype,
                                allow_nonfinite=args.allow_nonfinite, quantize=args.quantize)


def sampling_from_args(args: argparse.Namespace):
    """The Sampling add_sampling_flags' flags (and --seed) give, checked: a bad value is one line."""
    from ..checks import require_int
    from ..sampling import Sampling

    require_int("--max-new-tokens", args.max_new_tokens)
    return Sampling(args.max_new_tokens, args.temperature, args.top_k or None, args.top_p, args.seed)


def add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int, temperature: float, top_k: int) -> None:
    """--max-new-tokens, --temperature, --top-k, --top-p with the command's defaults."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                        help=f"most tokens to generate (default: {max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=temperature, metavar="T",
                        help=f"sampling temperature; 0 is greedy decoding (default: {temperature})")
    parser.add_argument("--top-k", type=int, default=top_k, metavar="K",
                        help=f"sample only from the K most likely tokens (default: {top_k}; 0 turns it off)")
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="sample only from the smallest set of tokens with probability >= P")


def add_index_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--index DIR (answers retrieve from it) and -k N."""
    parser.add_argument("--index", required=required, metavar="DIR",
                        help="an index of your documents (gptforge index add): each question's best passages go "
                             "into the prompt, and their sources are listed")
    parser.add_argument("-k", type=int, default=4, metavar="N", dest="passages",
                        help="with --index: passages retrieved per question, before trimming to fit the "
                             "model's context (default: 4)")


def retriever_from_args(args: argparse.Namespace, model):
    """The retriever --index names for `model` (None without --index); a model without a chat
    template cannot read passages, which is one line of error."""
    from ..chat import has_chat
    from ..errors import UserError
    from ..retrieval.passages import retriever

    if not args.index:
        return None
    retrieve = retriever(args.index, args.passages)  # a missing index first: the model is not the mistake
    if not has_chat(model):
        raise UserError("--index needs a chat model (one with a chat template): the passages go into its "
                        "system turn; fine-tune a base model first (gptforge finetune)")
    return retrieve
