import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import gptforge.training.loop as loop
from gptforge.data import prepare_corpus
from gptforge.errors import UserError
from gptforge.generate import generate_text
from gptforge.text import read_documents
from gptforge.tokenizer import gpt2, load_tokenizer
from gptforge.tokenizer.train import train_on_train_split
from gptforge.training import train
from gptforge.training.config import OptimArgs, TrainConfig
from gptforge.training.config_files import load_config_file
from gptforge.training.optim import lr_factor, make_optimizer
from gptforge.training.step import UpdateGuard
from gptforge.weights import load_any

from helpers import assert_user_error, run_cli, run_cli_here


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """A 20,479-character stand-in for the reference recipe's short story (same length)."""
    docs = read_documents("builtin:shakespeare")
    text = dict(docs)["builtin:shakespeare/sonnets"][:20479]
    path = tmp_path_factory.mktemp("story") / "story.txt"
    path.write_text(text, encoding="utf-8")
    return path


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tiny(**fields):
    base = dict(preset="gpt2-tiny", batch_size=2, eval_batches=2, device="cpu", seed=123)
    return {**base, **fields}


@pytest.mark.slow  # 10 epochs of the recipe
def test_reference_recipe_overfits_on_a_tiny_model(story, tmp_path):
    """The reference recipe (ctx 256, batch 2, stride = ctx, 10 epochs, eval every 5 steps on 5
    batches, constant LR, dropout 0.1, no qkv bias, the reference's untied N(0, 1) embeddings) on
    a small model, as CI can afford: it starts near ln(50257) and ends overfitting the story.
    The full-size run (gpt2-124m) is recorded in benchmarks/README.md."""
    recipe = load_config_file("the-verdict")
    recipe.update(preset="gpt2-tiny", emb_dim=128, lr=3e-3, device="cpu", data=str(story),
                  out=str(tmp_path / "run"))
    result = train(TrainConfig.from_dict(recipe), progress=False)
    text = story.read_text()
    n_train = len(gpt2().encoding.encode_ordinary(text[:int(0.9 * len(text))]))
    steps_per_epoch = len(range(0, n_train - 256, 256)) // 2
    assert result.step == 10 * steps_per_epoch
    history = rows(result.run_dir)
    assert [r["step"] for r in history][:3] == [1, 5, 10]
    assert abs(history[0]["train_loss"] - math.log(50257)) < 1.5
    assert abs(history[0]["val_loss"] - math.log(50257)) < 1.5
    assert history[-1]["epoch"] == pytest.approx(10.0)
    assert history[-1]["tokens_seen"] == result.step * 2 * 256
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 3.5  # it learns the story...
    assert history[-1]["val_loss"] > history[-1]["train_loss"] + 1.5  # ...and does not generalise
    assert (result.run_dir / "loss.png").stat().st_size > 5000
    assert (result.run_dir / "checkpoints" / f"step-{result.step:08d}" / "model.safetensors").exists()
    resolved = json.loads((result.run_dir / "config.json").read_text())
    assert resolved["model"]["context_length"] == 256 and resolved["train"]["epochs"] == 10
    assert resolved["model"]["tie_embeddings"] is False


def test_resume_gives_the_same_losses_bitwise(story, tmp_path):
    fields = tiny(data=str(story), context_length=64, dropout=0.1, lr=1e-3, eval_every=1,
                  eval_batches=1, save_every=3)
    straight = train(TrainConfig.of(**fields, max_steps=8, out=str(tmp_path / "a")), progress=False)
    train(TrainConfig.of(**fields, max_steps=4, out=str(tmp_path / "b")), progress=False)
    resumed = train(resume=tmp_path / "b", max_steps=8, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]
    assert strip(rows(resumed.run_dir)) == strip(rows(straight.run_dir))
    assert len(rows(straight.run_dir)) == 8
    a = load_file(straight.checkpoint / "model.safetensors")
    b = load_file(resumed.checkpoint / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # two runs over two epochs
def test_resume_crosses_an_epoch_boundary_with_shuffling(story, tmp_path):
    fields = tiny(data=str(story), context_length=256, dropout=0.1, lr=1e-3, eval_every=2,
                  eval_batches=1, save_every=5, epochs=2)
    # the 18k-character train split gives 9 steps per epoch: 13 steps cross into epoch 2
    straight = train(TrainConfig.of(**fields, max_steps=13, out=str(tmp_path / "a")), progress=False)
    train(TrainConfig.of(**fields, max_steps=5, out=str(tmp_path / "b")), progress=False)
    resumed = train(resume=tmp_path / "b", max_steps=13, progress=False)
    by_step = lambda run: {r["step"]: (r["train_loss"], r["val_loss"]) for r in rows(run)}
    resumed_losses, straight_losses = by_step(resumed.run_dir), by_step(straight.run_dir)
    # the short first session adds its own end-of-run evaluation at step 5; every step the
    # straight run evaluated has the same losses in the resumed one
    assert set(resumed_losses) == set(straight_losses) | {5}
    assert all(resumed_losses[s] == straight_losses[s] for s in straight_losses)
    assert rows(resumed.run_dir)[-1]["epoch"] > 1.0


def test_lr_schedules():
    cfg = OptimArgs(lr=2.0, warmup_steps=4, lr_schedule="cosine", min_lr=0.2)
    lrs = [2.0 * lr_factor(s, cfg, 14) for s in range(14)]
    assert lrs[:4] == [0.5, 1.0, 1.5, 2.0]
    assert lrs[4] == pytest.approx(2.0) and lrs[-1] == pytest.approx(0.2 + 0.9 * (1 + math.cos(math.pi * 0.9)))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lr_factor(100, cfg, 14) == pytest.approx(0.1)
    assert lr_factor(7, OptimArgs(lr=0.5), 10) == 1.0


def test_weight_decay_only_on_matrices():
    from gptforge import GPT, GPTConfig

    model = GPT(GPTConfig.from_preset("gpt2-tiny"))
    opt = make_optimizer(model, OptimArgs(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


@pytest.mark.slow  # runs and a resume
def test_random_offset_sampling_trains_and_resumes(story, tmp_path):
    fields = tiny(data=str(story), context_length=64, sampling="random", eval_every=2, eval_batches=1,
                  save_every=3)
    straight = train(TrainConfig.of(**fields, max_steps=6, out=str(tmp_path / "a")), progress=False)
    train(TrainConfig.of(**fields, max_steps=3, out=str(tmp_path / "b")), progress=False)
    resumed = train(resume=tmp_path / "b", max_steps=6, progress=False)
    assert rows(resumed.run_dir)[-1]["train_loss"] == rows(straight.run_dir)[-1]["train_loss"]
    assert straight.step == 6


def test_python_api_for_a_notebook(story, tmp_path):
    import gptforge

    result = gptforge.train(data=str(story), **tiny(context_length=32, max_steps=3,
                                                    out=str(tmp_path / "r")), progress=False)
    model = gptforge.load_any(tmp_path / "r")
    assert model.config.context_length == 32 and not model.training
    assert result.step == 3 and math.isfinite(result.val_loss)


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_bad_input_is_one_clear_line_and_touches_nothing(story, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    base = ["train", "--preset", "gpt2-tiny", "--device", "cpu", "--no-progress"]
    cases = [
        (["--data", str(tmp_path / "missing.txt")], "no such file"),
        (["--data", str(empty)], "is empty"),
        (["--data", str(short)], "training split"),
        (["--data", str(story), "--val-fraction", "0.004"], "validation split"),
        (["--data", str(story), "--batch-size", "0"], "batch-size must be a positive integer"),
        (["--data", str(story), "--lr-schedule", "linear"], "invalid choice"),
        (["--data", str(story), "--n-heads", "5"], "n_heads (5) must divide emb_dim (64)"),
        (["--resume", str(tmp_path)], "no complete checkpoint"),
        (["--config", str(tmp_path / "nope.toml")], "config file not found"),
    ]
    for args, fragment in cases:
        assert_user_error(run_cli_here(*base, *args, "--out", str(tmp_path / "never")), fragment)
    assert not (tmp_path / "never").exists()

    run = tmp_path / "run"
    train(TrainConfig.of(**tiny(data=str(story), context_length=32, max_steps=2, out=str(run))), progress=False)
    before = snapshot(run)
    assert_user_error(run_cli_here("train", "--resume", str(run), "--context-length", "64"),
                      "context-length=64 does not match the run's 32")
    assert_user_error(run_cli_here(*base, "--data", str(story), "--out", str(run)), "already holds a run")
    assert snapshot(run) == before


@pytest.mark.slow  # the workflow as CLI processes
def test_cli_train_eval_plot_generate(story, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "--data", str(story), "--preset", "gpt2-tiny", "--context-length", "32",
                "--max-steps", "4", "--eval-every", "2", "--sample-every", "2", "--sample-prompt",
                "Thou art", "--out", str(run), "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "sample at step 2: 'Thou art" in r.stdout
    assert [row["step"] for row in rows(run)] == [1, 2, 4]
    (run / "loss.png").unlink()
    assert run_cli("plot", str(run)).returncode == 0 and (run / "loss.png").exists()
    ev = run_cli("eval", "--checkpoint", str(run), "--data", str(story), "--json", "--device", "cpu")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-9)
    gen = run_cli("generate", "--checkpoint", str(run), "--prompt", "Thou", "--max-new-tokens", "5",
                  "--temperature", "0")
    assert gen.returncode == 0 and gen.stdout.startswith("Thou")


def test_bundled_configs_resolve():
    from gptforge.cli.train import QUICKSTART

    verdict = TrainConfig.from_dict(load_config_file("the-verdict")).model_config()
    assert (verdict.n_layers, verdict.context_length, verdict.dropout, verdict.qkv_bias) == (12, 256, 0.1, False)
    medium = TrainConfig.from_dict(load_config_file("gutenberg-345m"))
    assert (medium.model_config().n_layers, medium.seed, medium.optim.lr, medium.optim.batch_size) == (24, 246, 2e-4, 8)
    old_quick = TrainConfig.from_dict(load_config_file("shakespeare-cpu"))
    assert old_quick.corpus.data == "builtin:shakespeare" and old_quick.optim.max_steps == 300
    quick = TrainConfig.from_dict(load_config_file(QUICKSTART))  # `gptforge train` with no arguments
    assert quick.corpus.data == "builtin:shakespeare" and quick.corpus.tokenizer == "bpe:4096" and quick.optim.max_time == "5m"
    assert quick.model_config().arch == "modern" and quick.optim.optimizer == "muon"
    with pytest.raises(UserError, match="bundled configs"):
        load_config_file("no-such-recipe")


def test_the_gpu_speedrun_config_runs_on_a_cpu_at_a_tiny_size(text, tmp_path):
    """speedrun-gpu as a user would run it (its bfloat16 autocast, Muon, cosine schedule and time
    budget), with only the shape shrunk and compilation off, so it runs here in seconds."""

    settings = load_config_file("speedrun-gpu")
    full = TrainConfig.from_dict(settings)
    assert full.model_config().arch == "modern" and full.optim.optimizer == "muon" and full.optim.max_time == "10m"
    assert full.model_config().n_layers == 12 and full.model_config().emb_dim == 768
    small = dict(n_layers=2, emb_dim=32, n_heads=2, context_length=32, batch_size=2, max_steps=3, eval_every=3,
                 eval_batches=1, compile=False, device="cpu", data=str(text), out=str(tmp_path / "run"))
    result = train(TrainConfig.from_dict({**settings, **small}), progress=False)
    assert result.step == 3 and math.isfinite(result.val_loss)
    model = load_any(result.run_dir)
    assert model.config.arch == "modern" and model.config.positions == "rope" and not model.config.tie_embeddings
    state = torch.load(result.checkpoint / "train_state.pt", weights_only=True)
    assert "momentum_buffer" in state["optimizer"]["state"]["blocks.0.attn.qkv.weight"]  # Muon's


@pytest.mark.slow  # two runs
def test_init_from_continues_pretraining_with_a_new_optimizer(story, tmp_path):
    first = train(TrainConfig.of(**tiny(data=str(story), context_length=64, lr=3e-3, max_steps=30,
                                     eval_every=0, out=str(tmp_path / "a"))), progress=False)
    cont = train(TrainConfig.of(**tiny(data=str(story), init_from=str(tmp_path / "a"), context_length=32,
                                    max_steps=2, eval_every=1, out=str(tmp_path / "b"))), progress=False)
    history = rows(cont.run_dir)
    # starts from the trained weights (far below the untrained ~10.8), not from scratch
    assert history[0]["train_loss"] < first.train_loss + 0.5 < 9.0
    saved = load_file(cont.checkpoint / "model.safetensors")
    assert saved["pos_emb.weight"].shape == (32, 64)
    source = load_file(first.checkpoint / "model.safetensors")
    assert not torch.equal(saved["pos_emb.weight"], source["pos_emb.weight"][:32])  # trained on
    with pytest.raises(UserError, match="does not match the --init-from model"):
        train(TrainConfig.of(**tiny(data=str(story), init_from=str(tmp_path / "a"), n_layers=3,
                                 max_steps=1, out=str(tmp_path / "c"))), progress=False)
    with pytest.raises(UserError, match="longer than the --init-from model"):
        train(TrainConfig.of(**tiny(data=str(story), init_from=str(tmp_path / "a"), context_length=128,
                                 max_steps=1, out=str(tmp_path / "d"))), progress=False)


def _fused_setup(fused: bool):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused or None, foreach=not fused)
    for _ in range(2):  # some optimizer state to keep intact
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
    model(torch.randn(2, 4)).sum().backward()
    return model, optimizer


def _snapshot(model, optimizer):
    state = [v.clone() for s in optimizer.state.values() for v in s.values()]
    return [p.detach().clone() for p in model.parameters()], state


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_update_guard_skips_a_nonfinite_update_entirely(fused, bad):
    model, optimizer = _fused_setup(fused)
    guard = UpdateGuard(torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False), step=2)
    before = _snapshot(model, optimizer)
    loss, norm = torch.tensor(1.5), torch.tensor(0.7)
    if bad == "loss":
        loss = torch.tensor(math.nan)
    else:
        norm = torch.tensor(math.inf)
    guard.step(optimizer, loss, norm)
    after = _snapshot(model, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before[0] + before[1], after[0] + after[1]))
    assert guard.count.item() == 1 and guard.first[0].item() == 3  # the third step was the bad one
    assert not hasattr(optimizer, "found_inf")

    guard.step(optimizer, torch.tensor(1.0), torch.tensor(0.5))  # a finite step updates
    assert not torch.equal(before[0][0], model.weight)
    assert guard.count.item() == 1 and guard.first[0].item() == 3


def test_the_loop_reads_the_device_only_at_sync_points(story, tmp_path, monkeypatch):
    """No .item() / .tolist() / bool() / float() of a tensor in steps between sync points: on a GPU
    each one would stall the queue of kernels."""
    steps, reads = {"n": 0}, set()
    real_step = loop.optimizer_step

    def counting_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        steps["n"] += 1
        return out

    monkeypatch.setattr(loop, "optimizer_step", counting_step)
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, **kwargs):
            reads.add(steps["n"])
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    result = train(data=str(story), out=str(tmp_path / "run"), max_steps=25, eval_every=0,
                   save_every=0, sample_every=0, context_length=32, **tiny())
    assert result.step == 25
    assert 10 in reads and 25 in reads  # the periodic and the final syncs happened
    assert reads <= {0, 1, 10, 20, 25}, sorted(reads)  # 0: setup, 1: the first evaluation


def test_checkpoints_hold_vocab_size_rows_for_weights_and_moments(story, tmp_path):
    result = train(data=str(story), out=str(tmp_path / "run"), max_steps=2, context_length=32, **tiny())
    weights = load_file(result.checkpoint / "model.safetensors")
    moments = torch.load(result.checkpoint / "train_state.pt", weights_only=True)["optimizer"]["state"]
    assert weights["tok_emb.weight"].shape[0] == 50257
    assert moments["tok_emb.weight"]["exp_avg"].shape[0] == 50257
    assert moments["tok_emb.weight"]["exp_avg_sq"].shape[0] == 50257
    resumed = train(resume=str(tmp_path / "run"), max_steps=3)  # padded again to load
    assert resumed.step == 3 and math.isfinite(resumed.train_loss)


def test_float16_with_fsdp_is_refused():
    with pytest.raises(UserError, match="float16 does not work with distributed fsdp"):
        TrainConfig.of(dtype="float16", distributed="fsdp")


@pytest.mark.slow  # the workflow as CLI processes
def test_a_run_with_its_own_tokenizer_carries_it_everywhere(story, tmp_path, tiny_bpe, tiny_bpe_dir):
    folder = tmp_path / "my-tokenizer"
    shutil.copytree(tiny_bpe_dir, folder)
    run = tmp_path / "run"
    fields = tiny(data=str(story), tokenizer=str(folder), context_length=32, eval_every=2, save_every=2,
                  sample_every=2, sample_prompt="Thou art", out=str(run))
    train(TrainConfig.of(**fields, max_steps=2), progress=False)
    shutil.rmtree(folder)  # the run needs nothing outside itself from now on
    resumed = train(resume=run, max_steps=4, progress=False)

    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"] == tiny_bpe.describe() and config["model"]["vocab_size"] == 400
    assert (run / "tokenizer" / "tokenizer.json").read_bytes() == (tiny_bpe_dir / "tokenizer.json").read_bytes()
    for checkpoint in sorted((run / "checkpoints").iterdir()):
        assert json.loads((checkpoint / "config.json").read_text())["tokenizer"]["sha256"] == tiny_bpe.sha256
    model = load_any(run)
    assert model.tokenizer.same_as(tiny_bpe) and model.config.vocab_size == tiny_bpe.vocab_size
    # The text was tokenized with it: the windows of 33 tokens come from its ids.
    text = story.read_text()
    n_train = len(tiny_bpe.encode(text[:int(0.9 * len(text))]))
    assert resumed.tokens_seen == 4 * 2 * 32 and n_train > len(gpt2().encode(text[:int(0.9 * len(text))]))

    # generate and eval use the model's own tokenizer without being told.
    gen = run_cli("generate", "--checkpoint", str(run), "--prompt", "Thou art", "--max-new-tokens", "8",
                  "--temperature", "0")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout == "".join(generate_text(model, "Thou art", 8, temperature=0, include_prompt=True)) + "\n"
    ev = json.loads(run_cli("eval", "--checkpoint", str(run), "--data", str(story), "--json").stdout)
    assert ev["bytes"] == len(text.encode()) - len(tiny_bpe.decode_bytes(tiny_bpe.encode(text)[:1]))

    # A run whose tokenizer is missing: one line, and nothing changes.
    for checkpoint in (run / "checkpoints").iterdir():
        shutil.rmtree(checkpoint / "tokenizer")
    before = snapshot(run)
    assert_user_error(run_cli("train", "--resume", str(run), "--max-steps", "6"), "whose files are missing")
    assert_user_error(run_cli("generate", "--checkpoint", str(run), "--prompt", "x"), "whose files are missing")
    assert snapshot(run) == before


def test_a_corpus_prepared_with_another_tokenizer_is_refused(story, tmp_path, tiny_bpe, tiny_bpe_dir):
    prepare_corpus([str(story)], tmp_path / "ours", tokenizer=tiny_bpe, progress=False)
    prepare_corpus([str(story)], tmp_path / "gpt2", progress=False)
    run = tmp_path / "run"
    result = train(TrainConfig.of(**tiny(data=str(tmp_path / "ours"), context_length=32, max_steps=2, out=str(run))),
                   progress=False)
    model = load_any(run)  # the corpus's tokenizer, its vocabulary, copied into the run
    assert model.config.vocab_size == 400 and model.tokenizer.same_as(tiny_bpe) and result.step == 2
    assert json.loads((run / "config.json").read_text())["tokenizer"]["sha256"] == tiny_bpe.sha256

    before = snapshot(run)
    shutil.rmtree(tmp_path / "ours")
    shutil.copytree(tmp_path / "gpt2", tmp_path / "ours")  # the same path, prepared again with GPT-2's
    assert_user_error(run_cli_here("train", "--resume", str(run), "--max-steps", "4"),
                      "was prepared with tokenizer gpt2, but this run uses " + tiny_bpe.name)
    base = ["train", "--preset", "gpt2-tiny", "--context-length", "32", "--max-steps", "2", "--no-progress"]
    assert_user_error(run_cli_here(*base, "--init-from", str(run), "--data", str(tmp_path / "gpt2"),
                              "--out", str(tmp_path / "never")), "was prepared with tokenizer gpt2")
    assert_user_error(run_cli_here(*base, "--tokenizer", str(tiny_bpe_dir), "--data", str(tmp_path / "gpt2"),
                              "--out", str(tmp_path / "never")), "was prepared with tokenizer gpt2")
    assert_user_error(run_cli_here(*base, "--init-from", str(run), "--tokenizer", "gpt2", "--data", str(story),
                              "--out", str(tmp_path / "never")), "is not the --init-from model's tokenizer")
    assert snapshot(run) == before and not (tmp_path / "never").exists()


def test_tokenizer_bpe_n_trains_one_on_the_train_split_first(story, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig.of(**tiny(data=str(story), tokenizer="bpe:300", context_length=32, max_steps=2, out=str(run))),
          progress=False)
    tokenizer = load_tokenizer(run / "tokenizer")
    text = story.read_text()
    expected = train_on_train_split(str(story), 0.1, 300, progress=False)
    assert tokenizer.same_as(expected) and load_any(run).config.vocab_size == 300
    assert tokenizer.meta["training"]["characters"] == int(0.9 * len(text))  # the val text stays unseen
    assert_user_error(run_cli_here("train", "--data", str(story), "--tokenizer", "bpe:many", "--out", str(tmp_path / "x")),
                      "write bpe:N")
