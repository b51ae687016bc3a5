"""Run configs in groups (training.config): flat settings <-> groups, TOML files, the flags, and
configs saved before the groups existed."""

import dataclasses
import json
from pathlib import Path

import pytest

from gptforge.cli import finetune as finetune_cli
from gptforge.cli import train as train_cli
from gptforge.cli.common import Parser
from gptforge.errors import UserError
from gptforge.training import train
from gptforge.training.config import FinetuneConfig, OptimArgs, TrainConfig
from gptforge.training.config_files import load_config_file

SAVED = Path(__file__).parent / "saved_configs"  # written by the code before the groups (see README.md)


def help_text(command) -> str:
    parser = Parser(prog=f"gptforge {command.NAME}")
    command.add_arguments(parser)
    return parser.format_help()


def test_flat_settings_land_in_their_groups_and_come_back_flat():
    cfg = TrainConfig.of(data="notes.txt", lr=1e-3, eval_every=7, out="runs/x", log=["csv"], n_layers=3, seed=5)
    assert (cfg.corpus.data, cfg.optim.lr, cfg.eval.eval_every, cfg.checkpoints.out) == ("notes.txt", 1e-3, 7, "runs/x")
    assert cfg.logging.log == ("csv",) and cfg.model == {"n_layers": 3} and cfg.seed == 5
    assert cfg.model_config().n_layers == 3 and cfg.model_config().emb_dim == 256  # the rest: gpt2-mini's
    flat = cfg.to_dict()
    assert flat["lr"] == 1e-3 and flat["n_layers"] == 3 and flat["emb_dim"] is None
    assert TrainConfig.from_dict(flat) == cfg and cfg.replace(lr=2e-3).optim.lr == 2e-3


def test_group_tables_are_accepted_and_checked():
    cfg = TrainConfig.from_dict({"optim": {"lr": 1e-3, "batch_size": 4}, "model": {"n_layers": 3}, "seed": 1})
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.model, cfg.seed) == (1e-3, 4, {"n_layers": 3}, 1)
    with pytest.raises(UserError, match=r"unknown training config key\(s\): optim.data"):
        TrainConfig.from_dict({"optim": {"data": "x"}})
    with pytest.raises(UserError, match=r"unknown training config key\(s\): n_layer"):
        TrainConfig.of(n_layer=3)
    with pytest.raises(UserError, match=r"unknown training config key\(s\): model.vocab_size"):
        TrainConfig.from_dict({"model": {"vocab_size": 10}})  # the tokenizer's


@pytest.mark.parametrize("settings, message", [
    (dict(batch_size=0), "batch-size must be"),
    (dict(n_layers=0), "n-layers must be a positive integer"),
    (dict(arch="llama"), "arch must be one of gpt2, modern"),
    (dict(seed=-1), "seed must be"),
    (dict(max_time="soon"), "max-time must be a positive duration"),
    (dict(dtype="float16", distributed="fsdp"), "does not work with distributed fsdp"),
    (dict(log=["mlflow"]), "log takes tensorboard, wandb, csv"),
])
def test_bad_settings_name_their_flag(settings, message):
    with pytest.raises(UserError, match=message):
        TrainConfig.of(**settings)


def test_a_group_stands_alone():
    assert OptimArgs().lr == 4e-4 and FinetuneConfig().optim == OptimArgs(lr=5e-5, epochs=2)
    with pytest.raises(UserError, match="lr must be"):
        OptimArgs(lr=0)


PRETRAINING_RECIPES = {"gutenberg-345m", "shakespeare-cpu", "speedrun-cpu", "speedrun-gpu", "the-verdict"}
FINETUNING_RECIPES = {"tasks-full", "tasks-lora", "dpo-cpu", "tools-cpu", "classify-cpu",
                      "documents-cpu"}


def test_every_bundled_config_loads_unchanged():
    bundled = {p.stem for p in (Path(train_cli.__file__).parents[1] / "configs").glob("*.toml")}
    assert bundled == PRETRAINING_RECIPES | FINETUNING_RECIPES  # a new recipe is listed as one or the other
    for name in sorted(bundled):
        cls = FinetuneConfig if name in FINETUNING_RECIPES else TrainConfig
        settings = load_config_file(name, cls)
        cfg = cls.from_dict(settings)
        assert {k: cfg.get(k) for k in settings} == settings  # every key landed where it is read back


def test_a_config_file_may_use_group_tables(tmp_path):
    (tmp_path / "grouped.toml").write_text('seed = 3\n[optim]\nlr = 0.002\n[model]\nn_layers = 2\n')
    cfg = TrainConfig.from_dict(load_config_file(str(tmp_path / "grouped.toml")))
    assert (cfg.seed, cfg.optim.lr, cfg.model) == (3, 2e-3, {"n_layers": 2})
    (tmp_path / "bad.toml").write_text('[optim]\nlearning_rate = 0.002\n')
    with pytest.raises(UserError, match=r"bad.toml: unknown training config key\(s\): optim.learning_rate"):
        load_config_file(str(tmp_path / "bad.toml"))


def test_every_setting_is_a_flag_with_its_docstring():
    text = help_text(train_cli)
    for name in TrainConfig.settings():
        assert f"--{name.replace('_', '-')}" in text
    assert "Peak AdamW learning rate" in text and "Number of transformer blocks" in text


def test_finetune_config_has_the_fine_tuning_defaults_and_only_its_groups():
    cfg = FinetuneConfig()
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.model, cfg.finetune.template, cfg.lora.lora_rank) == (
        5e-5, 2, {"dropout": 0.0}, "chatml", None)
    assert cfg.command == "finetune" and TrainConfig.command == "train"
    assert not hasattr(cfg, "corpus") and not hasattr(cfg, "preset")
    assert FinetuneConfig.of(lora_targets="mlp_out, qkv").lora.lora_targets == "qkv,mlp_out"
    with pytest.raises(UserError, match="unknown LoRA target"):
        FinetuneConfig.of(lora_targets="qkv,c_fc")
    with pytest.raises(UserError, match="preset is a pretraining setting"):
        FinetuneConfig.of(preset="gpt2-124m")
    with pytest.raises(UserError, match="n_layers is a pretraining setting"):
        FinetuneConfig.of(n_layers=2)
    with pytest.raises(UserError, match="lora-rank must be"):
        FinetuneConfig.of(lora_rank=0)
    text = help_text(finetune_cli)
    assert "--lora-rank" in text and "--train-on-prompt" in text and "--template" in text and "--dropout" in text
    assert "--preset" not in text and "--stride" not in text and "--sample-prompt" not in text
    assert "--n-layers" not in text
    assert FinetuneConfig.from_dict(FinetuneConfig.of(lora_rank=4).to_dict()).lora.lora_rank == 4
    unset = FinetuneConfig.of(dropout=None)  # None: the --init-from model's own
    assert unset.model == {} and FinetuneConfig.from_dict(unset.to_dict()) == unset


@pytest.mark.parametrize("name, cls", [("pretrain.json", TrainConfig), ("finetune-lora.json", FinetuneConfig)])
def test_a_flat_config_saved_before_the_groups_loads_and_is_written_back_the_same(name, cls):
    saved = json.loads((SAVED / name).read_text())["train"]
    cfg = cls.from_dict(saved)
    if cls is TrainConfig:
        assert (cfg.preset, cfg.model, cfg.optim.lr, cfg.seed, cfg.logging.log) == (
            "gpt2-tiny", {"context_length": 32, "n_layers": 1}, 1e-3, 7, ("csv",))
        assert json.loads(json.dumps(cfg.to_dict())) == saved  # the same flat shape, key for key
    else:
        assert (cfg.lora.lora_rank, cfg.lora.lora_targets, cfg.finetune.template, cfg.model) == (
            2, "qkv", "alpaca", {"dropout": 0.0})
        # the old shape also listed the pretraining settings, at their defaults; the new one drops them
        written = cfg.to_dict()
        added = set(written) - set(saved)  # settings added since (DPO's, classification's), at their defaults
        assert all(FinetuneConfig.settings()[k].group in ("preference", "classify") and written[k] == FinetuneConfig().get(k)
                   for k in added)
        old = {k: v for k, v in written.items() if k not in added}
        assert set(old) < set(saved) and all(saved[k] == json.loads(json.dumps(v)) for k, v in old.items())


def test_a_run_whose_checkpoint_holds_the_old_flat_config_resumes(text, tmp_path):
    """A checkpoint written before the groups: its config.json's flat `train` settings (from the
    saved file, with this test's paths) resume with the new code."""
    run = tmp_path / "run"
    first = train(TrainConfig.of(data=str(text), preset="gpt2-tiny", context_length=32, n_layers=1, batch_size=2,
                                 max_steps=2, eval_every=2, eval_batches=1, save_every=0, device="cpu", log=["csv"],
                                 out=str(run), seed=7, lr=1e-3), progress=False)
    old = json.loads((SAVED / "pretrain.json").read_text())["train"]
    old.update(data=str(text), out=str(run))
    for config in (first.checkpoint / "config.json", run / "config.json"):
        meta = json.loads(config.read_text())
        assert {k: v for k, v in meta["train"].items()} == old  # the new code wrote the old shape
        config.write_text(json.dumps({**meta, "train": old}))
    resumed = train(resume=str(run), max_steps=4, progress=False)
    assert resumed.step == 4
    assert json.loads((resumed.checkpoint / "config.json").read_text())["train"] == {**old, "max_steps": 4}
    with pytest.raises(UserError, match="lr=0.5 does not match the run's 0.001"):
        train(resume=str(run), lr=0.5, progress=False)


def test_every_group_field_has_a_one_line_docstring():
    from gptforge.field_docs import field_docs

    for cls in (TrainConfig, FinetuneConfig):
        for f in dataclasses.fields(cls):
            group = getattr(cls(), f.name)
            if dataclasses.is_dataclass(group):
                docs = field_docs(type(group))
                assert set(docs) == {g.name for g in dataclasses.fields(group)}, type(group)
