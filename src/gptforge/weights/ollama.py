"""The Ollama Modelfile written beside a GGUF export: `ollama create NAME -f Modelfile` makes a model
of it. Its TEMPLATE is our chat template in Go's text/template (tokenizer/chat.CHAT_TEMPLATE_GO);
a base model's is the prompt as it is. Generation stops at the tokens that end our answers."""

from __future__ import annotations

from ..sampling import Sampling
from ..tokenizer import EOT_TOKEN, Tokenizer
from ..tokenizer.chat import CHAT_TEMPLATE_GO, IM_END, has_chat_template

MODELFILE = "Modelfile"


def modelfile(gguf_name: str, tokenizer: Tokenizer, context_length: int, sampling: Sampling | None) -> str:
    """The Modelfile for the GGUF file `gguf_name` in the same folder; `sampling`'s temperature,
    top-k and top-p are the model's generation defaults there."""
    chat = has_chat_template(tokenizer)
    template = CHAT_TEMPLATE_GO if chat else "{{ .Prompt }}"
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""',
             # Ollama's default context may exceed the model's (learned positions end there)
             f"PARAMETER num_ctx {context_length}"]
    lines += [f'PARAMETER stop "{token}"' for token in ((IM_END, EOT_TOKEN) if chat else (EOT_TOKEN,))]
    if sampling is not None:
        lines.append(f"PARAMETER temperature {sampling.temperature:g}")
        if sampling.top_k:
            lines.append(f"PARAMETER top_k {sampling.top_k}")
        if sampling.top_p is not None:
            lines.append(f"PARAMETER top_p {sampling.top_p:g}")
    return "\n".join(lines) + "\n"
