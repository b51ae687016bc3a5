"""`gptforge convert`: Convert a Hugging Face GPT-2, Llama or Qwen3 folder (e.g. OpenAI's released
GPT-2 weights) to a gptforge checkpoint; a checkpoint to a folder that transformers'
AutoModelForCausalLM (GPT-2 for GPT-2's block, Llama or Qwen3 for the modern one) and AutoTokenizer
read (a LoRA checkpoint is merged into its base first); a checkpoint to one GGUF file for llama.cpp,
Ollama and LM Studio (merged the same way; an Ollama Modelfile beside it); a LoRA checkpoint to a
plain checkpoint with the adapter merged in; or a LoRA adapter to the PEFT format."""

from __future__ import annotations

from pathlib import Path

NAME = "convert"
HELP = ("weights from or to the Hugging Face format (GPT-2, Llama, Qwen3), to GGUF (llama.cpp, Ollama); "
        "merge or export LoRA adapters")


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR",
                     help="Hugging Face GPT-2, Llama or Qwen3 folder (config.json + model.safetensors or "
                          "pytorch_model.bin), or a hub id such as gpt2 when online")
    src.add_argument("--to-hf", metavar="CHECKPOINT", help="checkpoint or run folder to export")
    src.add_argument("--to-gguf", metavar="CHECKPOINT",
                     help="checkpoint or run folder to write as one GGUF file (--out FILE.gguf), with an "
                          "Ollama Modelfile beside it")
    src.add_argument("--merge-lora", metavar="CHECKPOINT",
                     help="LoRA checkpoint or run to merge into its base: a plain checkpoint")
    src.add_argument("--to-peft", metavar="CHECKPOINT",
                     help="LoRA checkpoint or run whose adapter to write in the PEFT format "
                          "(adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (with --to-gguf: the .gguf file)")
    p.add_argument("--type", choices=("f32", "f16", "bf16", "q8_0"),
                   help="with --to-gguf: how the matrices are stored (norms and biases stay f32; default f32)")
    p.add_argument("--base", metavar="MODEL",
                   help="the base model of a LoRA checkpoint, when it is no longer where training "
                        "found it (checked against the sha256 the checkpoint records)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder (or a .gguf file)")


def run(args) -> int:
    from ..errors import UserError
    from ..files import check_output_folder
    from ..weights import export_hf, load_any, load_hf_model, save_checkpoint
    from ..weights.load import lora_checkpoint
    from ..weights.peft import export_peft

    if args.to_gguf:
        return _to_gguf(args)
    if args.type:
        raise UserError("--type is for --to-gguf")
    check_output_folder(args.out, args.overwrite)  # before a load that may take minutes
    if args.to_peft:
        export_peft(args.to_peft, args.out, overwrite=args.overwrite)
        print(f"wrote {args.out}: the adapter of {args.to_peft} in the PEFT format")
        return 0
    if args.from_hf:
        model = load_hf_model(args.from_hf)
        save_checkpoint(args.out, model)
    elif args.merge_lora:
        model = load_any(lora_checkpoint(args.merge_lora), base=args.base)
        save_checkpoint(args.out, model)
    else:
        model = load_any(args.to_hf, base=args.base)
        export_hf(model, args.out, overwrite=args.overwrite)
    c = model.config
    print(f"wrote {args.out}: {model.num_params():,} parameters ({c.n_layers} layers, {c.emb_dim} d, "
          f"{c.n_heads} heads, context {c.context_length})")
    return 0


def _to_gguf(args) -> int:
    from ..chat import ChatSettings
    from ..errors import UserError
    from ..weights import load_any
    from ..weights.gguf_export import write_gguf
    from ..weights.ollama import MODELFILE

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; --to-gguf writes one file (e.g. --out {out / 'model.gguf'})")
    for path in (out, out.parent / MODELFILE):  # before a load that may take minutes
        if path.exists() and not args.overwrite:
            raise UserError(f"{path} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"no such folder: {out.parent}")
    model = load_any(args.to_gguf, base=args.base)
    # `gptforge chat`'s defaults travel with the model
    write_gguf(model, out, args.type or "f32", ChatSettings().sampling, name=Path(args.to_gguf).name)
    print(f"wrote {out} ({args.type or 'f32'}, {out.stat().st_size / 1e6:,.1f} MB) and {out.parent / MODELFILE}: "
          f"`ollama create NAME -f {out.parent / MODELFILE}` makes an Ollama model of it")
    return 0
