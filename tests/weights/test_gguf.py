"""GGUF export (`convert --to-gguf`), read back with the gguf package's own reader (llama.cpp's GGUF
library) and checked against our weights and tokenizers; and, when llama-cpp-python is installed,
against llama.cpp itself.

The layouts are checked as llama.cpp's conventions state them, not by calling the exporter's
transforms: ggml lists a matrix's dims as {in, out}, so the reader's array is nn.Linear's (out, in);
llama.cpp's "llama" rotates pairs of consecutive values of each head (src/llama-model.cpp:
LLAMA_ROPE_TYPE_NORM) where we rotate halves, so its q/k row 2i of a head is our row i and row 2i+1
our row i + head_dim/2; its "qwen3" rotates halves (LLAMA_ROPE_TYPE_NEOX), rows as ours."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.sampling import Sampling
from gptforge.tokenizer import CHAT_TOKENS, TOOL_TOKENS, gpt2
from gptforge.tokenizer.bpe import PATTERN
from gptforge.tokenizer.chat import CHAT_TEMPLATE_GO, CHAT_TEMPLATE_JINJA
from gptforge.tokenizer.gpt2_bpe import asset_path
from gptforge.weights.checkpoint import save_checkpoint
from gptforge.weights.gguf_export import write_gguf

from helpers import run_cli

gguf = pytest.importorskip("gguf")

MODERN = dict(arch="modern", positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
              logit_softcap=0.0, rope_theta=5000.0, norm_eps=1e-6)
# llama.cpp's own pre-tokenizer regexes (src/llama-vocab.cpp): LLAMA_VOCAB_PRE_TYPE_LLAMA3 ("llama-bpe")
# and LLAMA_VOCAB_PRE_TYPE_GPT2 ("gpt-2").
LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def model_of(family: str, tokenizer, seed: int = 0, **overrides) -> GPT:
    """A tiny model of `family` whose every weight (norm gains and biases included) is random, so
    a swapped, dropped or mis-permuted tensor shows."""
    shape = {"gpt2": dict(qkv_bias=True), "llama": dict(MODERN, qk_norm=False), "qwen3": dict(MODERN, qk_norm=True)}[family]
    torch.manual_seed(seed)
    config = GPTConfig.from_preset("gpt2-tiny", **{"vocab_size": tokenizer.vocab_size, "context_length": 32,
                                                   **shape, **overrides})
    model = GPT(config, tokenizer).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model


@pytest.fixture(scope="module")
def gpt2_chat():
    return gpt2().with_special_tokens(list(CHAT_TOKENS))


CASES = [("gpt2", "gpt2"), ("gpt2", "gpt2-chat"), ("llama", "bpe"), ("qwen3", "bpe"), ("llama", "gpt2")]


@pytest.fixture
def tokenizers(tiny_bpe, gpt2_chat):
    return {"gpt2": gpt2(), "gpt2-chat": gpt2_chat, "bpe": tiny_bpe}


def read(path, keys: bool = True):
    """(key -> value, name -> tensor) as gguf's own reader sees the file; the keys only if asked
    (decoding 50,257 token strings takes seconds)."""
    reader = gguf.GGUFReader(str(path))
    values = {k: f.contents() for k, f in reader.fields.items() if keys and not k.startswith("GGUF.")}
    return values, {t.name: t for t in reader.tensors}


def expected_f32(model: GPT, family: str) -> dict[str, np.ndarray]:
    """Our state dict under llama.cpp's names, in its layouts (see the module docstring)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    c = model.config
    out = {"token_embd.weight": sd["tok_emb.weight"]}
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    out["output_norm.weight"] = sd["final_norm.weight"]
    if family == "gpt2":
        out["position_embd.weight"] = sd["pos_emb.weight"]
        out["output_norm.bias"] = sd["final_norm.bias"]
    for i in range(c.n_layers):
        b, g = f"blocks.{i}.", f"blk.{i}."
        out[g + "attn_norm.weight"], out[g + "ffn_norm.weight"] = sd[b + "ln1.weight"], sd[b + "ln2.weight"]
        out[g + "attn_output.weight"], out[g + "ffn_down.weight"] = sd[b + "attn.out_proj.weight"], sd[b + "mlp.out_proj.weight"]
        if family == "gpt2":
            for kind in ("weight", "bias"):
                out[f"{g}attn_qkv.{kind}"] = sd[f"{b}attn.qkv.{kind}"]  # fused [q; k; v], as ours
                out[f"{g}ffn_up.{kind}"] = sd[f"{b}mlp.fc.{kind}"]
                out[f"{g}attn_output.{kind}"] = sd[f"{b}attn.out_proj.{kind}"]
                out[f"{g}ffn_down.{kind}"] = sd[f"{b}mlp.out_proj.{kind}"]
            out[g + "attn_norm.bias"], out[g + "ffn_norm.bias"] = sd[b + "ln1.bias"], sd[b + "ln2.bias"]
            continue
        q, k, v = np.split(sd[b + "attn.qkv.weight"], 3)
        if family == "llama":  # row 2i of a head <- our row i, row 2i+1 <- our row i + d/2
            d = c.head_dim
            order = [h * d + j // 2 + (j % 2) * (d // 2) for h in range(c.n_heads) for j in range(d)]
            q, k = q[order], k[order]
        else:
            out[g + "attn_q_norm.weight"], out[g + "attn_k_norm.weight"] = sd[b + "attn.q_norm.weight"], sd[b + "attn.k_norm.weight"]
        out[g + "attn_q.weight"], out[g + "attn_k.weight"], out[g + "attn_v.weight"] = q, k, v
        out[g + "ffn_gate.weight"], out[g + "ffn_up.weight"] = np.split(sd[b + "mlp.fc.weight"], 2)  # [gate; up]
    return out


@pytest.mark.parametrize("family,tok", [case for case in CASES if case[1] != "gpt2-chat"])
def test_f32_export_holds_every_tensor_exactly(tmp_path, tokenizers, family, tok):
    model = model_of(family, tokenizers[tok], tie_embeddings=tok == "gpt2")  # tied: no output.weight
    _, tensors = read(write_gguf(model, tmp_path / "m.gguf", "f32"), keys=False)
    want = expected_f32(model, family)
    assert sorted(tensors) == sorted(want)
    for name, array in want.items():
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        np.testing.assert_array_equal(np.asarray(t.data).reshape(array.shape), array, err_msg=name)
        assert [int(n) for n in t.shape] == list(array.shape[::-1]), name  # ggml's {in, out}


@pytest.mark.parametrize("type_", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_reduced_precision_within_its_rounding_and_small_tensors_stay_f32(tmp_path, tiny_bpe, family, type_):
    model = model_of(family, tiny_bpe, tie_embeddings=False)
    keys, tensors = read(write_gguf(model, tmp_path / "m.gguf", type_))
    assert keys["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7}[type_]  # llama.cpp's LlamaFileType
    qtype = gguf.GGMLQuantizationType[type_.upper()]
    for name, array in expected_f32(model, family).items():
        t = tensors[name]
        if array.ndim == 1 or name.startswith("position_embd"):  # norms, biases, positions: f32 as llama.cpp wants
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
            np.testing.assert_array_equal(np.asarray(t.data).reshape(array.shape), array)
            continue
        assert t.tensor_type == qtype, name
        got = gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(array.shape)
        if type_ == "f16":
            np.testing.assert_array_equal(got, array.astype(np.float16).astype(np.float32), err_msg=name)
        elif type_ == "bf16":
            rounded = torch.from_numpy(array).to(torch.bfloat16).float().numpy()
            np.testing.assert_array_equal(got, rounded, err_msg=name)
        else:  # q8_0: blocks of 32 values, one scale (max |x| / 127, stored as f16) and 32 int8s: each value
            # within half a step, plus up to 127 steps' worth of the scale's f16 rounding (2^-11 relative)
            step = np.abs(array.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            error = np.abs(got.reshape(-1, 32) - array.reshape(-1, 32))
            assert (error <= step * (0.5 + 127 * 2.0**-11) + 1e-7).all(), name
            assert not np.array_equal(got, array)  # it was quantized


def test_q8_0_falls_back_to_f16_for_rows_of_partial_blocks(tmp_path, tiny_bpe):
    model = model_of("llama", tiny_bpe, emb_dim=48, n_heads=4)  # rows of 48 values: not whole 32-blocks
    _, tensors = read(write_gguf(model, tmp_path / "m.gguf", "q8_0"), keys=False)
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0  # rows of 192


def gpt2_token_texts() -> list[str]:
    encoder = json.loads(Path(asset_path("encoder.json")).read_text(encoding="utf-8"))
    return [t for t, _ in sorted(encoder.items(), key=lambda item: item[1])]


@pytest.mark.parametrize("family,tok", CASES)
def test_metadata_describes_the_model_and_its_tokenizer(tmp_path, tokenizers, family, tok):
    tokenizer = tokenizers[tok]
    model = model_of(family, tokenizer, vocab_size=tokenizer.vocab_size + 3)  # 3 padding ids
    keys, _ = read(write_gguf(model, tmp_path / "m.gguf", "f32", Sampling(256, temperature=0.7, top_k=50)))
    c, a = model.config, family
    assert keys["general.architecture"] == family
    assert (keys[f"{a}.context_length"], keys[f"{a}.embedding_length"], keys[f"{a}.block_count"],
            keys[f"{a}.attention.head_count"], keys[f"{a}.feed_forward_length"]) == (32, c.emb_dim, 2, 4, c.mlp_width)
    if family == "gpt2":
        assert keys["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    else:
        assert keys[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
        assert keys[f"{a}.rope.freq_base"] == 5000.0
        assert keys[f"{a}.rope.dimension_count"] == keys[f"{a}.attention.key_length"] == c.head_dim
        assert keys[f"{a}.attention.head_count_kv"] == 4
    assert keys["general.sampling.temp"] == pytest.approx(0.7) and keys["general.sampling.top_k"] == 50

    # the vocabulary, against the tokenizer's own files
    assert keys["tokenizer.ggml.model"] == "gpt2"
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    specials = tokenizer.special_tokens
    if tok.startswith("gpt2"):
        assert keys["tokenizer.ggml.pre"] == "gpt-2"
        assert tokens[:50257] == gpt2_token_texts()
        merges = Path(asset_path("vocab.bpe")).read_text(encoding="utf-8").split("\n")[1:-1]
    else:
        assert keys["tokenizer.ggml.pre"] == "llama-bpe"
        doc = json.loads(tokenizer.json_bytes)
        by_id = {i: t for t, i in doc["model"]["vocab"].items()} | {t["id"]: t["content"] for t in doc["added_tokens"]}
        assert tokens[:tokenizer.vocab_size] == [by_id[i] for i in range(tokenizer.vocab_size)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]
    assert keys["tokenizer.ggml.merges"] == merges
    known = set(tokens)
    assert all(a + b in known for a, b in (m.split(" ") for m in merges))
    assert tokens[-3:] == [f"[PAD{i}]" for i in range(tokenizer.vocab_size, tokenizer.vocab_size + 3)]
    assert types == [3 if i in specials.values() else 1 if i < tokenizer.vocab_size else 5 for i in range(len(tokens))]
    assert [tokens[i] for i in specials.values()] == list(specials)

    chat = "<|im_end|>" in specials
    assert keys["tokenizer.ggml.bos_token_id"] == tokenizer.eot_id
    assert keys["tokenizer.ggml.eos_token_id"] == (specials["<|im_end|>"] if chat else tokenizer.eot_id)
    assert keys["tokenizer.ggml.add_bos_token"] is False
    assert keys.get("tokenizer.chat_template") == (CHAT_TEMPLATE_JINJA if chat else None)


@pytest.mark.parametrize("ours,llama_cpp", [(PATTERN, LLAMA3_REGEX), (None, GPT2_REGEX)])
def test_the_named_pre_tokenizer_splits_text_as_ours(ours, llama_cpp):
    """The pre-tokenizer names we write stand for llama.cpp's regexes; each must split any text into
    the same pieces as the pattern our tokenizer uses (GPT-2's: tiktoken's r50k pattern). As in
    llama.cpp's splitter, text no alternative matches is a piece of its own."""
    import random

    regex = pytest.importorskip("regex")
    from tiktoken_ext.openai_public import r50k_pat_str

    from helpers import random_unicode

    def pieces(pattern, text):
        out, end = [], 0
        for match in pattern.finditer(text):
            out += [text[end:match.start()]] if match.start() > end else []
            out.append(match.group())
            end = match.end()
        return out + ([text[end:]] if end < len(text) else [])

    ours = regex.compile(ours or r50k_pat_str)
    theirs = regex.compile(llama_cpp)
    rng = random.Random(0)
    texts = [random_unicode(rng, 200) for _ in range(300)]
    texts += ["I've 'RE 'Ll 1234567 x\r\n\r\n  \n\t y!!!\n\nz", "   \n\n  a  ", "héllo wörld 日本語 123,456.78 :-)"]
    for text in texts:
        assert pieces(ours, text) == pieces(theirs, text), repr(text)
        assert "".join(pieces(ours, text)) == text


def render_go(template: str, messages: list[dict]) -> str:
    """The one Go text/template construct CHAT_TEMPLATE_GO uses, rendered: text, a range over
    .Messages whose body uses .Role and .Content, text after it."""
    body, tail = re.fullmatch(r"\{\{- range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template, re.DOTALL).groups()
    rendered = "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in messages)
    return rendered + tail


def test_modelfile_templates_the_chat_as_ours(tmp_path, tiny_bpe):
    import jinja2

    write_gguf(model_of("qwen3", tiny_bpe), tmp_path / "chat.gguf", "q8_0", Sampling(256, temperature=0.7, top_k=50))
    text = (tmp_path / "Modelfile").read_text()
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.DOTALL).group(1)
    assert template == CHAT_TEMPLATE_GO
    assert text.splitlines()[0] == "FROM ./chat.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER num_ctx 32" in text and "PARAMETER temperature 0.7" in text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And?"}]
    jinja = jinja2.Template(CHAT_TEMPLATE_JINJA).render(messages=messages, add_generation_prompt=True)
    assert render_go(template, messages) == jinja


def test_a_tool_model_carries_the_tool_template_and_its_markers_as_control_tokens(tmp_path, tiny_bpe):
    """llama.cpp's --jinja reads the same template transformers does (tested against our ids in
    tests/tokenizer/test_chat_template.py); the markers are control tokens like <|im_start|>.
    The Modelfile's Go template stays the plain chat one."""
    tokenizer = tiny_bpe.with_special_tokens(TOOL_TOKENS)
    write_gguf(model_of("qwen3", tokenizer), tmp_path / "tools.gguf", "f32")
    keys, _ = read(tmp_path / "tools.gguf")
    assert keys["tokenizer.chat_template"] == CHAT_TEMPLATE_JINJA and "<tool_call>" in CHAT_TEMPLATE_JINJA
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    assert [types[tokens.index(t)] for t in TOOL_TOKENS] == [3, 3, 3, 3]
    assert re.search(r'TEMPLATE """(.*?)"""', (tmp_path / "Modelfile").read_text(), re.DOTALL).group(1) == CHAT_TEMPLATE_GO


def test_a_base_model_s_modelfile_continues_the_prompt(tmp_path):
    write_gguf(model_of("gpt2", gpt2()), tmp_path / "base.gguf", "f16")
    text = (tmp_path / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "<|im_end|>" not in text


def test_models_llama_cpp_cannot_compute_are_refused(tmp_path, tiny_bpe):
    for overrides, fragment in [(dict(logit_softcap=30.0), "logit_softcap"), (dict(mlp="relu2"), "relu2")]:
        with pytest.raises(UserError, match=fragment):
            write_gguf(model_of("llama", tiny_bpe, **overrides), tmp_path / "m.gguf")
    model = model_of("gpt2", gpt2(), vocab_size=100)  # fewer ids than its tokenizer: no vocabulary to write
    with pytest.raises(UserError, match="fewer than its tokenizer"):
        write_gguf(model, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def lora_checkpoint(tmp_path, tokenizer):
    """A base checkpoint and a LoRA checkpoint on it with a random adapter, and the merged model."""
    from gptforge.model.lora import add_lora, merge_lora
    from gptforge.weights.load import base_identity

    base_path = save_checkpoint(tmp_path / "base", model_of("llama", tokenizer))
    model = model_of("llama", tokenizer)
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=("qkv", "mlp_in"), base=base_identity(base_path))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" in name:
                p.normal_(0, 0.2)
    path = save_checkpoint(tmp_path / "adapter", model)
    return path, merge_lora(model).eval()


def test_cli_merges_a_lora_checkpoint_and_refuses_to_overwrite(tmp_path, tiny_bpe, capsys):
    from gptforge.cli import main

    path, merged = lora_checkpoint(tmp_path, tiny_bpe)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    result = run_cli("convert", "--to-gguf", str(path), "--out", str(out), "--type", "q8_0")  # as a user runs it
    assert result.returncode == 0, result.stderr
    assert "Modelfile" in result.stdout and read(out)[0]["general.file_type"] == 7
    before = out.read_bytes()
    for args, fragment in [(["--to-gguf", str(path), "--out", str(out)], "--overwrite"),
                           (["--to-gguf", str(path), "--out", str(out.parent)], "is a folder"),
                           (["--to-hf", str(path), "--out", str(tmp_path / "hf"), "--type", "q8_0"], "--to-gguf")]:
        assert main(["convert", *args]) == 2
        assert fragment in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["convert", "--to-gguf", str(path), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "m.gguf"]
    _, tensors = read(out, keys=False)
    for name, array in expected_f32(merged, "llama").items():  # the adapter merged in, f32 by default
        np.testing.assert_allclose(np.asarray(tensors[name].data).reshape(array.shape), array, rtol=0, atol=1e-6)


# --- against llama.cpp itself (llama-cpp-python), when it is installed ------------------------------

PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away,", "1 + 1 = 2. 2 + 2 ="]
MULTILINGUAL = "Grüße aus Köln! 日本語のテキスト, ελληνικά, русский; emoji 🚀🦙 <|endoftext|> <|im_start|>user\n  x\r\n"


def llama_of(path, n_ctx: int):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the parity with "
                                    "llama.cpp itself is checked only where it is)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, logits_all=False, verbose=False,
                           seed=0)


def sharpened(model: GPT) -> GPT:
    """`model` with larger logits, so its greedy choices are not near-ties that float rounding
    (llama.cpp's kernels against torch's) could flip."""
    with torch.no_grad():
        (model.tok_emb if model.config.tie_embeddings else model.lm_head).weight.mul_(4)
    return model


@pytest.mark.parametrize("family,tok", CASES)
def test_llama_cpp_tokenizes_and_decodes_greedily_as_we_do(tmp_path, tokenizers, family, tok):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from gptforge.generate import generate

    tokenizer = tokenizers[tok]
    model = sharpened(model_of(family, tokenizer, context_length=64))
    llm = llama_of(write_gguf(model, tmp_path / "m.gguf", "f32"), 64)
    for text in [MULTILINGUAL, *PROMPTS]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text), text
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        ours = generate(model, torch.tensor([ids]), max_new_tokens=12, temperature=0.0)[0, len(ids):].tolist()
        theirs = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            theirs.append(token)
            if len(theirs) == 12:
                break
        assert theirs == ours, prompt


def test_llama_cpp_chat_completion_answers_as_our_chat(tmp_path, tiny_bpe):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from gptforge.chat import chat_text

    model = sharpened(model_of("qwen3", tiny_bpe, context_length=64))
    llm = llama_of(write_gguf(model, tmp_path / "chat.gguf", "f32"), 64)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a play?"}]
    ours = "".join(chat_text(model, messages, max_new_tokens=10, temperature=0.0))
    answer = llm.create_chat_completion(messages=messages, max_tokens=10, temperature=0.0, top_k=1, repeat_penalty=1.0)
    assert answer["choices"][0]["message"]["content"] == ours
