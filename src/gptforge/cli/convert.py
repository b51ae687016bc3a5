"""`gptforge convert`: Convert a Hugging Face GPT-2, Llama or Qwen3 folder (e.g. OpenAI's released
GPT-2 weights) to a gptforge checkpoint; a checkpoint to a folder that transformers'
AutoModelForCausalLM (GPT-2 for GPT-2's block, Llama or Qwen3 for the modern one) and AutoTokenizer
read (a LoRA checkpoint is merged into its base first); a LoRA checkpoint to a plain checkpoint with
the adapter merged in; or a LoRA adapter to the PEFT format."""

from __future__ import annotations

NAME = "convert"
HELP = "weights from or to the Hugging Face format (GPT-2, Llama, Qwen3); merge or export LoRA adapters"


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR",
                     help="Hugging Face GPT-2, Llama or Qwen3 folder (config.json + model.safetensors or "
                          "pytorch_model.bin), or a hub id such as gpt2 when online")
    src.add_argument("--to-hf", metavar="CHECKPOINT", help="checkpoint or run folder to export")
    src.add_argument("--merge-lora", metavar="CHECKPOINT",
                     help="LoRA checkpoint or run to merge into its base: a plain checkpoint")
    src.add_argument("--to-peft", metavar="CHECKPOINT",
                     help="LoRA checkpoint or run whose adapter to write in the PEFT format "
                          "(adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--base", metavar="MODEL",
                   help="the base model of a LoRA checkpoint, when it is no longer where training "
                        "found it (checked against the sha256 the checkpoint records)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args) -> int:
    from ..files import check_output_folder
    from ..weights import export_hf, load_any, load_hf_model, save_checkpoint
    from ..weights.load import lora_checkpoint
    from ..weights.peft import export_peft

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
