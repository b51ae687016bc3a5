import pytest
import torch

from gptforge import __version__
from gptforge.config import GPTConfig
from gptforge.generate import generate
from gptforge.model import GPT
from gptforge.tokenizer import gpt2, ids_to_text, text_to_ids
from gptforge.weights.checkpoint import save_checkpoint

from helpers import assert_user_error, run_cli, run_cli_here

ACCEPTANCE = ["generate", "--preset", "gpt2-124m", "--random-init", "--seed", "123", "--prompt",
              "Every effort moves you", "--max-new-tokens", "10", "--temperature", "0"]


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"gptforge {__version__}"  # `python -m gptforge` runs
    help_text = run_cli_here("--help").stdout
    assert "generate" in help_text
    gen_help = run_cli_here("generate", "--help").stdout
    for flag in ("--checkpoint", "--random-init", "--top-p", "--stop-at-eos", "--no-kv-cache",
                 "--num-samples", "--device"):
        assert flag in gen_help


@pytest.mark.slow  # five GPT-2 124M models built
def test_random_init_greedy_is_reproducible_and_matches_the_library():
    first, second = run_cli_here(*ACCEPTANCE), run_cli_here(*ACCEPTANCE)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    torch.manual_seed(123)
    model = GPT(GPTConfig.from_preset("gpt2-124m"))
    out = generate(model, text_to_ids("Every effort moves you"), max_new_tokens=10, temperature=0)
    assert out.shape == (1, 14)
    assert first.stdout == ids_to_text(out) + "\n"
    no_cache = run_cli_here(*ACCEPTANCE, "--no-kv-cache")
    assert no_cache.stdout == first.stdout
    bf16 = run_cli_here(*ACCEPTANCE, "--dtype", "bfloat16")
    assert bf16.returncode == 0, bf16.stderr
    assert bf16.stdout.startswith("Every effort moves you") and len(bf16.stdout) > len(first.stdout) // 2


def test_generate_from_a_checkpoint_and_a_run_folder(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2-tiny"), gpt2())
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000005", model)
    args = ["--prompt", "Hello", "--max-new-tokens", "6", "--temperature", "0"]
    from_ckpt = run_cli_here("generate", "--checkpoint", str(tmp_path / "run/checkpoints/step-00000005"), *args)
    from_run = run_cli_here("generate", "--checkpoint", str(tmp_path / "run"), *args)
    assert from_ckpt.returncode == 0, from_ckpt.stderr
    expected = ids_to_text(generate(model, text_to_ids("Hello"), 6, temperature=0))
    assert from_ckpt.stdout == from_run.stdout == expected + "\n"


def test_sampling_with_seed_and_several_samples():
    args = ["generate", "--preset", "gpt2-tiny", "--random-init", "--prompt", "Once upon a time",
            "--max-new-tokens", "8", "--num-samples", "3", "--top-p", "0.9"]
    a, b = run_cli_here(*args, "--seed", "1"), run_cli_here(*args, "--seed", "1")
    assert a.returncode == 0 and a.stdout == b.stdout
    samples = a.stdout.split("--- sample ")[1:]
    assert len(samples) == 3
    assert all("Once upon a time" in s for s in samples)


def test_stop_at_eos_and_empty_prompt():
    # An empty prompt starts from <|endoftext|>; the sample printed never contains the marker itself.
    r = run_cli_here("generate", "--preset", "gpt2-tiny", "--random-init", "--seed", "3", "--prompt", "",
                "--max-new-tokens", "5", "--stop-at-eos", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "<|endoftext|>" not in r.stdout
    assert len(gpt2().encoding.encode_ordinary(r.stdout.rstrip("\n"))) <= 5 + 2


def test_long_prompt_is_cropped_with_a_notice():
    r = run_cli_here("generate", "--preset", "gpt2-tiny", "--random-init", "--seed", "0", "--prompt",
                "word " * 100, "--max-new-tokens", "3", "--temperature", "0")
    assert r.returncode == 0
    assert "the model sees only the last 64" in r.stderr
    assert r.stdout.startswith("word " * 100)


@pytest.mark.parametrize("args, fragment", [
    (["--preset", "gpt2-huge", "--random-init"], "unknown preset 'gpt2-huge'"),
    (["--preset", "gpt2-tiny", "--random-init", "--temperature", "-1"], "temperature must be 0 (greedy) or at least"),
    (["--preset", "gpt2-tiny", "--random-init", "--top-p", "0"], "top-p must be in [1e-06, 1]"),
    (["--preset", "gpt2-tiny", "--random-init", "--top-p", "1.5"], "top-p must be in [1e-06, 1]"),
    (["--preset", "gpt2-tiny"], "--preset needs --random-init"),
    (["--checkpoint", "/no/such/checkpoint"],
     "no such checkpoint, run folder or Hugging Face model folder: /no/such/checkpoint"),
    (["--preset", "gpt2-tiny", "--random-init", "--device", "cuda:7"], "device"),
    (["--preset", "gpt2-tiny", "--random-init", "--max-new-tokens", "ten"], "invalid int value"),
    (["--preset", "gpt2-tiny", "--random-init", "--device", "cpu", "--dtype", "float16"],
     "--dtype float16 is for GPUs"),
])
def test_bad_input_is_one_clear_line(args, fragment):
    assert_user_error(run_cli_here("generate", "--prompt", "hi", *args), fragment)
