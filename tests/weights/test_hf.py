"""Hugging Face GPT-2 import/export, with transformers as the independent reference. Offline: every
model is built here and saved with save_pretrained into tmp_path."""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.generate import generate
from gptforge.model import GPT
from gptforge.tokenizer import CHAT_TOKENS, gpt2
from gptforge.tokenizer.gpt2_bpe import asset_path
from gptforge.weights import load_any
from gptforge.weights.checkpoint import save_checkpoint
from gptforge.weights.hf import export_hf

from helpers import assert_user_error, random_unicode, run_cli

TINY_HF = dict(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network, and an empty Hub cache, for this process and the CLI processes it starts."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def hf_model(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """A random GPT2LMHeadModel whose biases and norms are not their trivial init values, so a
    mixed-up or dropped bias shows in the logits."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**TINY_HF, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_bin(model: GPT2LMHeadModel, folder: Path, legacy: bool = False) -> None:
    """pytorch_model.bin as older transformers wrote it (transformers 5 writes only safetensors);
    `legacy` as in OpenAI's original upload: no "transformer." prefix, causal-mask buffers, and a
    copy of the tied LM head."""
    model.config.save_pretrained(folder)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if legacy:
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        n = model.config.n_positions
        for i in range(model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- in: Hugging Face -> gptforge ----------------------------------------------------------------

@pytest.mark.parametrize("variant", ["safetensors", "bin", "legacy-bin", "untied"])
def test_imported_logits_equal_transformers(tmp_path, variant):
    reference = hf_model(tie_word_embeddings=variant != "untied")
    folder = tmp_path / "hf"
    if variant.endswith("bin"):
        save_bin(reference, folder, legacy=variant == "legacy-bin")
    else:
        reference.save_pretrained(folder)
    model = load_any(folder)  # the library entry point dispatches to the Hugging Face reader
    assert model.config.tie_embeddings == (variant != "untied")
    assert (model.lm_head.weight is model.tok_emb.weight) == (variant != "untied")
    torch.manual_seed(1)
    idx = torch.randint(0, TINY_HF["vocab_size"], (4, TINY_HF["n_positions"]))
    with torch.no_grad():
        diff = (model(idx) - reference(idx).logits).abs().max().item()
    assert diff < 1e-5, diff


@pytest.mark.slow  # CLI processes
def test_round_trip_hf_to_gptforge_to_hf_is_identical(tmp_path):
    hf_model().save_pretrained(tmp_path / "hf")
    result = run_cli("convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    result = run_cli("convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back"))
    assert result.returncode == 0, result.stderr
    before, after = load_file(tmp_path / "hf/model.safetensors"), load_file(tmp_path / "back/model.safetensors")
    assert sorted(before) == sorted(after)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    config_before = GPT2Config.from_pretrained(tmp_path / "hf")
    config_after = GPT2Config.from_pretrained(tmp_path / "back")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                "activation_function", "layer_norm_epsilon", "tie_word_embeddings"):
        assert getattr(config_before, key) == getattr(config_after, key), key


def test_initial_weights_come_from_any_of_the_three_sources(tmp_path):
    hf_model().save_pretrained(tmp_path / "hf")
    from_hf = load_any(tmp_path / "hf")
    save_checkpoint(tmp_path / "run/checkpoints/step-00000001", from_hf)
    idx = torch.randint(0, TINY_HF["vocab_size"], (2, 8))
    expected = from_hf(idx)
    for source in ("run", "run/checkpoints/step-00000001"):
        torch.testing.assert_close(load_any(tmp_path / source)(idx), expected, rtol=0, atol=0)


@pytest.mark.slow  # a process's peak memory
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_loading_does_not_hold_the_weights_twice(tmp_path, fmt):
    """Peak anonymous memory while loading ~130 MB of weights stays near one copy. File pages the
    loader maps are the OS's page cache, so RssAnon, not RSS, is what is sampled; the first model
    built on the meta device costs ~70 MB once (torch's meta kernels), so a warm-up comes first."""
    config = GPTConfig(vocab_size=1000, context_length=16, emb_dim=256, n_heads=4, n_layers=40)
    with torch.device("meta"):
        size = sum(p.numel() * 4 for p in GPT(config).parameters())
    torch.manual_seed(0)
    export_hf(GPT(config, gpt2()), tmp_path / "hf")
    if fmt == "bin":
        torch.save(load_file(tmp_path / "hf/model.safetensors"), tmp_path / "hf/pytorch_model.bin")
        (tmp_path / "hf/model.safetensors").unlink()
    probe = f"""
import threading, time, torch
from gptforge import GPT, GPTConfig
from gptforge.weights.hf import load_hf_model
with torch.device("meta"):
    GPT(GPTConfig(vocab_size=8, context_length=4, emb_dim=8, n_heads=2, n_layers=1))
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
base, peak, done = anon(), [0], []
def sample():
    while not done:
        peak[0] = max(peak[0], anon())
        time.sleep(0.0005)
thread = threading.Thread(target=sample)
thread.start()
model = load_hf_model({str(tmp_path / "hf")!r})
done.append(1)
thread.join()
print(max(peak[0], anon()) - base)
"""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    grown = int(result.stdout.strip())
    assert grown < 1.25 * size, (grown, size)  # two copies would be 2x


# --- out: gptforge -> Hugging Face ---------------------------------------------------------------

def trained_model(tie_embeddings: bool) -> GPT:
    """A tiny GPT with GPT-2's vocabulary and no qkv bias, trained a few AdamW steps on one sentence
    so that its greedy continuation is a confident, non-trivial token sequence."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2,
                       qkv_bias=False, tie_embeddings=tie_embeddings)
    model = GPT(config, gpt2())
    ids = gpt2().encoding.encode("The quick brown fox jumps over the lazy dog. " * 3)[:33]
    batch = torch.tensor([ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(8):
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_exported_model_loads_cleanly_and_computes_the_same_logits(tmp_path, tied):
    model = trained_model(tie_embeddings=tied)
    export_hf(model, tmp_path / "hf")
    reference, info = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    reference.eval()
    assert all(not entries for entries in info.values()), info  # nothing missing or unexpected
    assert reference.config.tie_word_embeddings is tied
    for block in reference.transformer.h:  # no qkv bias: exported as an exactly equivalent zero
        assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    torch.manual_seed(1)
    idx = torch.randint(0, 50257, (3, 32))
    with torch.no_grad():
        diff = (reference(idx).logits - model(idx)).abs().max().item()
    assert diff < 1e-5, diff


@pytest.mark.slow  # CLI processes and transformers
def test_greedy_text_from_transformers_equals_gptforge_generate(tmp_path):
    model = trained_model(tie_embeddings=False)
    save_checkpoint(tmp_path / "ckpt", model)
    result = run_cli("convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr

    prompt, n = "The quick", 12
    reference = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=50256)
    assert out.shape == (1, inputs.input_ids.shape[1] + n)  # no early stop at <|endoftext|>
    ours = generate(model, inputs.input_ids, max_new_tokens=n, temperature=0)
    assert torch.equal(out, ours)

    args = ["--prompt", prompt, "--max-new-tokens", str(n), "--temperature", "0"]
    for source in (["--hf", str(tmp_path / "hf")], ["--checkpoint", str(tmp_path / "ckpt")]):
        result = run_cli("generate", *source, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == tokenizer.decode(out[0]) + "\n"


def test_exported_tokenizer_encodes_like_ours(tmp_path):
    config = GPTConfig(vocab_size=50257, context_length=48, emb_dim=8, n_heads=2, n_layers=1)
    export_hf(GPT(config, gpt2()), tmp_path / "hf")
    assert (tmp_path / "hf/vocab.json").read_bytes() == Path(asset_path("encoder.json")).read_bytes()
    assert (tmp_path / "hf/merges.txt").read_bytes() == Path(asset_path("vocab.bpe")).read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.model_max_length == 48 and tokenizer.eos_token_id == 50256
    text = ("Hello, world! It's 2026; we're testing GPT-2's BPE.\n\n  Indented\tline\r\n"
            "Numbers 3.14159 and 1,000,000; emoji 🦊🔥; 日本語のテキスト; Ünïcödé café naïve.\n"
            "def f(x):\n    return x ** 2  # code    with   runs of spaces   \n"
            "They'll've; I'M; ''quoted'' \"double\" <tag attr='v'> end of text<|endoftext|>next doc")
    enc = gpt2().encoding
    expected = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert tokenizer(text)["input_ids"] == expected
    assert tokenizer.decode(expected) == text


@pytest.mark.slow  # CLI processes
def test_export_of_a_model_with_its_own_tokenizer(tmp_path, tiny_bpe, text):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tiny_bpe.vocab_size, context_length=48, emb_dim=16, n_heads=2, n_layers=1),
                tiny_bpe)
    export_hf(model, tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.eos_token_id == tiny_bpe.eot_id and len(tokenizer) == tiny_bpe.vocab_size
    rng = random.Random(0)
    for sample in [text.read_text()[:20000]] + [random_unicode(rng, 300) for _ in range(30)]:
        ids = tiny_bpe.encode(sample)
        assert tokenizer(sample)["input_ids"] == ids
        assert tokenizer.decode(ids) == sample
    reference = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert reference.config.vocab_size == 400 and reference.config.eos_token_id == tiny_bpe.eot_id
    idx = torch.tensor([tiny_bpe.encode(text.read_text()[:200])[:48]])
    with torch.no_grad():
        torch.testing.assert_close(reference(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
    # ...and back: the folder's tokenizer comes with the model, into a checkpoint too.
    assert load_any(tmp_path / "hf").tokenizer.same_as(tiny_bpe)
    result = run_cli("convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr
    assert load_any(tmp_path / "ckpt").tokenizer.same_as(tiny_bpe)


def test_export_of_gpt2_with_chat_tokens_gives_them_the_same_ids(tmp_path):
    chat = gpt2().with_special_tokens(CHAT_TOKENS)
    model = GPT(GPTConfig(vocab_size=chat.vocab_size, context_length=16, emb_dim=8, n_heads=2, n_layers=1), chat)
    export_hf(model, tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.convert_tokens_to_ids(list(CHAT_TOKENS)) == [50257, 50258] and len(tokenizer) == 50259
    assert tokenizer("plain text, as GPT-2's")["input_ids"] == chat.encode("plain text, as GPT-2's")
    assert load_any(tmp_path / "hf").tokenizer.describe() == chat.describe()


# --- mistakes and hostile files: one clear line, exit 2, nothing written -------------------------

class RunsCode:
    """Pickles to a call of os.system: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def break_folder(folder: Path, how: str, marker: Path) -> str:
    """Make a broken Hugging Face folder; return the fragment the error message must contain."""
    model = hf_model()
    if how == "mistral":
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(
            {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_size": 32}))
        save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, folder / "model.safetensors")
        return "is not a model gptforge can read (config.json says model_type 'mistral'"
    if how == "no-weights":
        model.config.save_pretrained(folder)
        return "has no weights"
    if how == "not-gpt2-shaped":
        model.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
        return "does not support activation_function 'relu'"
    model.save_pretrained(folder)
    if how == "shape":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "n_positions": 64}))
        return "wpe.weight has shape (32, 32), but config.json implies (64, 32)"
    if how == "missing-layer":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
        return "missing ['h.2.attn.c_attn.bias'"
    if how == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        return "cannot read"
    if how == "pickle":
        (folder / "model.safetensors").unlink()
        torch.save({"transformer.wte.weight": torch.zeros(2), "x": RunsCode(marker)},
                   folder / "pytorch_model.bin")
        return "refusing to load"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["mistral", "no-weights", "not-gpt2-shaped", "shape",
                                 "missing-layer", "truncated", "pickle"])
@pytest.mark.slow  # a CLI process each
def test_bad_hugging_face_folders_are_refused(tmp_path, how):
    marker = tmp_path / "code-ran"
    fragment = break_folder(tmp_path / "hf", how, marker)
    out = tmp_path / "ckpt"
    assert_user_error(run_cli("convert", "--from-hf", str(tmp_path / "hf"), "--out", str(out)), fragment)
    assert_no_output(out)
    with pytest.raises(UserError, match=re.escape(fragment)):
        load_any(tmp_path / "hf")
    assert not marker.exists()
    if how == "pickle":
        assert_user_error(run_cli("generate", "--hf", str(tmp_path / "hf"), "--prompt", "x"), fragment)
        assert not marker.exists()
        # the file really is hostile (read its opcodes, without running them): it calls os.system
        import pickletools
        import zipfile

        with zipfile.ZipFile(tmp_path / "hf/pytorch_model.bin") as archive:
            payload = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        names = [arg for op, arg, _ in pickletools.genops(payload) if isinstance(arg, str)]
        assert f"{os.system.__module__} system" in names  # the GLOBAL opcode naming os.system


@pytest.mark.slow  # CLI processes
def test_hub_id_offline_and_missing_folders_say_what_to_do(tmp_path):
    out = tmp_path / "ckpt"
    result = run_cli("convert", "--from-hf", "openai-community/gpt2", "--out", str(out))
    assert_user_error(result, "could not be fetched from the Hugging Face Hub")
    assert "pass that local folder" in result.stderr
    assert_user_error(run_cli("convert", "--from-hf", str(tmp_path / "nope"), "--out", str(out)),
                      "folder not found")
    assert_no_output(out)
    with pytest.raises(UserError, match="could not be fetched"):
        load_any("gpt2")


@pytest.mark.slow  # CLI processes
def test_export_refuses_to_overwrite_and_never_leaves_a_partial_folder(tmp_path, monkeypatch):
    model = GPT(GPTConfig(vocab_size=101, context_length=8, emb_dim=8, n_heads=2, n_layers=1), gpt2())
    save_checkpoint(tmp_path / "ckpt", model)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(run_cli("convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(out)),
                      "pass --overwrite")
    assert_user_error(run_cli("convert", "--from-hf", str(tmp_path / "ckpt"), "--out", str(out)),
                      "pass --overwrite")
    assert (out / "keep.txt").read_text() == "mine"

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("gptforge.weights.hf.save_file", disk_full)
        with pytest.raises(OSError):
            export_hf(model, out, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # the old folder is untouched
        with pytest.raises(OSError):
            export_hf(model, tmp_path / "new")
        assert_no_output(tmp_path / "new")

    result = run_cli("convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_train_init_from_a_hugging_face_folder(tmp_path):
    """Continued pretraining of GPT-2 weights: the run takes the folder's shape and weights."""
    from gptforge.text import read_documents
    from gptforge.training import train
    from gptforge.training.config import TrainConfig

    source = hf_model(vocab_size=50257, n_positions=64)
    source.save_pretrained(tmp_path / "hf")
    text = dict(read_documents("builtin:shakespeare"))["builtin:shakespeare/hamlet"][:20000]
    (tmp_path / "text.txt").write_text(text)
    result = train(TrainConfig.of(data=str(tmp_path / "text.txt"), init_from=str(tmp_path / "hf"),
                               context_length=32, batch_size=2, max_steps=2, eval_every=1,
                               device="cpu", out=str(tmp_path / "run")), progress=False)
    trained = load_any(result.checkpoint)
    assert trained.config.qkv_bias and trained.config.emb_dim == source.config.n_embd
    assert trained.config.context_length == 32
    wpe = source.transformer.wpe.weight.detach()[:32]
    assert not torch.equal(trained.pos_emb.weight, wpe)  # trained on from there...
    assert (trained.pos_emb.weight - wpe).abs().max() < 0.05  # ...not from scratch


# llama.cpp's convert_hf_to_gguf.py names a BPE tokenizer's pre-tokenizer by the sha256 of str(ids) that
# AutoTokenizer gives for this text (get_vocab_base_pre in its conversion/base.py); this hash is the one
# it names "gpt-2" (openai-community/gpt2). A GPT-2 config.json without n_ctx stopped it with KeyError.
LLAMA_CPP_CHECK_TEXT = (
    '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis co'
    'ncatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអា'
    'ច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!'
    "!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like "
    "some tea? We'Ve a'lL"
)
LLAMA_CPP_GPT2_HASH = "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454"


@pytest.mark.parametrize("chat", [False, True])
def test_gpt2_export_has_what_llama_cpp_s_converter_reads(tmp_path, chat):
    import hashlib

    from transformers import AutoConfig

    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS if chat else ())
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=48, emb_dim=8, n_heads=2, n_layers=1),
                tokenizer)
    export_hf(model, tmp_path / "hf")
    config = AutoConfig.from_pretrained(tmp_path / "hf").to_dict()  # as the converter reads it
    assert (config["n_ctx"], config["n_embd"], config["n_head"], config["n_layer"]) == (48, 8, 2, 1)
    assert config["layer_norm_epsilon"] == 1e-5 and config["vocab_size"] == tokenizer.vocab_size
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_tokenizer.save_pretrained(tmp_path / "resaved")  # and once transformers has saved it again
    for folder in ("hf", "resaved"):
        ids = AutoTokenizer.from_pretrained(tmp_path / folder).encode(LLAMA_CPP_CHECK_TEXT)
        assert hashlib.sha256(str(ids).encode()).hexdigest() == LLAMA_CPP_GPT2_HASH, folder
