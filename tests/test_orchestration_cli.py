"""The sweep's command line: --dry-run lists the study's grid exactly; bad flags give one-line errors."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.config import CPU_DEMO, STUDY, resolve
from orchestration.errors import SweepError
from orchestration.grid import TrialSpec, grid_trials, param_space
from tests.tools import run_module

ROOT = Path(__file__).resolve().parent.parent


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m orchestration.sweep ARGS` run in `cwd`, in-process."""
    return run_module("orchestration.sweep", *args, cwd=cwd)


def sweep_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real `python -m orchestration.sweep ARGS`, a process of its own."""
    return subprocess.run([sys.executable, "-m", "orchestration.sweep", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def table_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if re.match(r"^\s*\d+\s", line)]


@pytest.mark.parametrize("preset", ["study", "cpu-demo"])
def test_dry_run_lists_the_ddpm_grid_exactly(preset, tmp_path):
    out = sweep("--model", "ddpm", "--preset", preset, "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert len(rows) == 16
    combos = {(r[1], r[2], r[3], r[4]) for r in rows}
    expected = {(ga, t, snr, ch) for ga in ("1", "4") for t in ("1000", "10000") for snr in ("off", "5")
                for ch in ("small", "large")}
    assert combos == expected
    if preset == "study":
        assert "[128, 256, 512, 512]" in out.stdout and "[256, 512, 768, 768]" in out.stdout
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def test_dry_run_lists_the_lora_grid_exactly(tmp_path):
    out = sweep("--model", "sd-lora", "--preset", "study", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert len(rows) == 24
    assert {(r[1], r[2], r[3], r[4]) for r in rows} == {
        (ga, t, snr, r) for ga in ("1", "4") for t in ("1000", "10000") for snr in ("off", "5") for r in ("2", "4", "8")
    }


def test_dry_run_optuna_describes_the_space(tmp_path):
    out = sweep("--search", "optuna", "--num-samples", "7", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "7 trials" in out.stdout and "lr" in out.stdout and "guidance_scale" in out.stdout


def test_bad_model_from_the_real_command_line(tmp_path):
    from data.catalogue import FAMILIES

    out = sweep_command("--model", "gan", cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        f"error: argument --model: expected a comma-separated list of {', '.join(FAMILIES)}, got 'gan' (see --help)"
    ]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--epochs", "-1"], ["--epochs", "-1"]),
        (["--epochs", "many"], ["--epochs"]),
        (["--final-epochs", "-2"], ["--final-epochs"]),
        (["--address", "127.0.0.1:1"], ["127.0.0.1:1", "ray start"]),
        (["--address", "nonsense"], ["--address"]),
        (["--local-cpus", "0"], ["--local-cpus", "at least 1"]),
        (["--local-cpus", "1", "--address", "auto"], ["--local-cpus 1", "--address auto", "drop one"]),
        (["--storage-path", "{file}/sub"], ["--storage-path", "not writable"]),
        (["--tracking-uri", "sqlite:///{file}/sub/mlruns.db"], ["MLflow store", "not writable"]),
        (["--resume"], ["nothing to resume"]),
        (["--resume", "no-such-sweep"], ["nothing to resume", "no-such-sweep"]),
        (["--select-metric", "mtcnn"], ["--select-metric mtcnn", "MTCNN is off", "--mtcnn"]),
        (["--select-metric", "clip_score"], ["--select-metric clip_score", "--clip-model"]),
        (["--storage-path", "s3://bucket/sweeps"], ["remote storage is not supported", "mount"]),
        (["--storage-path", "file://fileserver/sweeps"], ["another host", "mount"]),
        (["--storage-path", "{file}"], ["is a file, not a directory"]),
        (["--storage-path", ""], ["--storage-path is empty"]),
        (["--sampling-steps", "zero"], ["--sampling-steps"]),
    ],
)
def test_bad_flags_give_one_line_errors(args, words, tmp_path, monkeypatch):
    from orchestration.sweep import main

    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = [a.replace("{file}", str(blocker)) for a in args]
    extra = [] if "--storage-path" in args else ["--storage-path", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *extra])
    message = str(exit_info.value.code)
    assert exit_info.value.code not in (0, None)
    assert message.startswith("error:") and "\n" not in message, message
    for w in words:
        assert w in message
    assert not (tmp_path / "mlruns.db").exists(), "nothing half-written"


def test_grid_and_param_space_agree():
    for cfg, n in ((STUDY, 16), (CPU_DEMO, 16), (resolve("study", model="sd-lora"), 24)):
        trials = grid_trials(cfg)
        assert len(trials) == n and len(set(trials)) == n
        space = param_space(cfg)
        sizes = [len(v["grid_search"]) for v in space.values()]
        assert __import__("math").prod(sizes) == n
        for t in trials:
            assert TrialSpec.from_params(t.params()) == t


def test_config_validation_names_the_fix():
    with pytest.raises(SweepError, match="unknown preset"):
        resolve("huge")
    with pytest.raises(SweepError, match="--eval-samples"):
        resolve("cpu-demo", eval_samples=0)
    # the cpu preset keeps the study's axes and maps the channel axis to two tiny channel sets
    assert CPU_DEMO.grad_accum_axis == STUDY.grad_accum_axis and CPU_DEMO.timesteps_axis == STUDY.timesteps_axis
    assert [n for n, _ in CPU_DEMO.channel_sets] == ["small", "large"]
    small, large = (sum(c) for _, c in CPU_DEMO.channel_sets)
    assert small < large


def test_data_of_the_wrong_size_is_refused_before_anything_starts(tmp_path, monkeypatch):
    from data.synthetic import toy_cache
    from orchestration.sweep import main

    monkeypatch.chdir(tmp_path)
    data = toy_cache(size=16, n_train=32, n_val=8, n_test=8, root=tmp_path / "data", progress=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "study", "--data", str(data), "--storage-path", str(tmp_path / "results")])
    message = str(exit_info.value.code)
    assert message.startswith("error:") and "16px" in message and "64px" in message and "\n" not in message
    assert not list((tmp_path / "results").iterdir()) and not (tmp_path / "mlruns.db").exists()


def test_flags_override_the_preset_and_only_what_they_name():
    from orchestration.sweep import build_parser, config_from_args

    def cfg(*args):
        return config_from_args(build_parser().parse_args(list(args)))

    assert cfg() == CPU_DEMO  # no flags: the embedded default exactly
    assert cfg("--preset", "study") == STUDY
    assert cfg("--mtcnn").mtcnn is True and cfg("--preset", "study", "--no-mtcnn").mtcnn is False
    changed = cfg("--model", "sd-lora", "--epochs", "3", "--lr", "1e-3", "--cfg-scales", "1,3", "--max-concurrent", "4")
    assert (changed.model, changed.epochs, changed.lr, changed.cfg_scales, changed.max_concurrent) == (
        "sd-lora", 3, 1e-3, (1.0, 3.0), 4)
    assert dataclasses.replace(changed, model="ddpm", epochs=2, lr=CPU_DEMO.lr, cfg_scales=CPU_DEMO.cfg_scales,
                               max_concurrent=CPU_DEMO.max_concurrent) == CPU_DEMO


def test_the_engines_speed_options_reach_every_trial_and_its_params(tmp_path):
    from orchestration.sweep import build_parser, config_from_args
    from orchestration.trainable import TrialContext, train_config, trial_params

    cfg = config_from_args(build_parser().parse_args(["--mixed-precision", "bf16", "--compile"]))
    assert (cfg.mixed_precision, cfg.compile) == ("bf16", True)
    assert (CPU_DEMO.mixed_precision, CPU_DEMO.compile) == ("auto", False)
    spec = grid_trials(cfg)[0].resolved(cfg)
    train = train_config(cfg, spec, epochs=1)
    assert (train.mixed_precision, train.compile) == ("bf16", True)
    ctx = TrialContext(sweep=cfg, phase="grid", data_root="", epochs=1, epoch_images=64)
    _, params = trial_params(spec.params(), ctx)
    assert (params["train.mixed_precision"], params["train.compile"]) == ("bf16", True)
    with pytest.raises(SweepError, match="--mixed-precision"):
        resolve("cpu-demo", mixed_precision="fp8")
    out = sweep("--mixed-precision", "no", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0 and "training: mixed precision no, torch.compile off" in out.stdout, out.stderr


def test_the_lr_schedule_reaches_every_trial_and_the_study_keeps_it_constant():
    from orchestration.sweep import build_parser, config_from_args
    from orchestration.trainable import TrialContext, train_config, trial_params

    cfg = config_from_args(build_parser().parse_args(["--lr-schedule", "cosine", "--lr-warmup-steps", "50"]))
    spec = grid_trials(cfg)[0].resolved(cfg)
    train = train_config(cfg, spec, epochs=1)
    assert (train.lr_scheduler, train.lr_warmup_steps) == ("cosine", 50)
    ctx = TrialContext(sweep=cfg, phase="grid", data_root="", epochs=1, epoch_images=64)
    _, params = trial_params(spec.params(), ctx)
    assert (params["train.lr_scheduler"], params["train.lr_warmup_steps"]) == ("cosine", 50)
    study = train_config(STUDY, grid_trials(STUDY)[0].resolved(STUDY), epochs=1)
    assert (study.lr_scheduler, CPU_DEMO.lr_schedule) == ("constant", "constant")
    with pytest.raises(SweepError, match="lr.schedule"):
        resolve("cpu-demo", lr_schedule="linear")


def test_final_seeds_per_preset_on_the_command_line_in_each_final_run_and_in_an_older_sweep(tmp_path):
    import json

    from orchestration.config import SMOKE
    from orchestration.phases.final import final_seeds
    from orchestration.state import STATE_FILE, SweepState
    from orchestration.sweep import build_parser, config_from_args
    from orchestration.trainable import TrialContext, trial_params

    assert (STUDY.final_seeds, CPU_DEMO.final_seeds, SMOKE.final_seeds) == (2, 1, 1)
    cfg = config_from_args(build_parser().parse_args(["--final-seeds", "3", "--seed", "5"]))
    assert cfg.final_seeds == 3 and cfg.params()["final_seeds"] == "3" and final_seeds(cfg) == [5, 6, 7]
    with pytest.raises(SweepError, match="--final-seeds"):
        resolve("cpu-demo", final_seeds=0)
    out = sweep("--preset", "study", "--dry-run", cwd=tmp_path)
    assert "final run, trained with 2 seeds (0..1; the first registered)" in out.stdout, out.stderr
    spec = grid_trials(cfg)[0].resolved(cfg)
    for seeds, seed, name in ((3, 6, "-seed6"), (1, 6, "")):  # each seed's final run: its own name and train.seed
        seeded = dataclasses.replace(cfg, final_seeds=seeds, seed=seed)
        run, params = trial_params(spec.params(), TrialContext(seeded, "final", "", epochs=1, epoch_images=64))
        assert run.endswith(f"-small{name}") and params["train.seed"] == seed, run
    # a sweep recorded before the setting existed trained one final seed: resumed, it still does
    state = SweepState.create(dataclasses.replace(STUDY, storage_path=str(tmp_path)), "sqlite:///x.db")
    raw = json.loads((state.root / STATE_FILE).read_text())
    del raw["config"]["final_seeds"]
    (state.root / STATE_FILE).write_text(json.dumps(raw))
    assert SweepState.load(state.root).config.final_seeds == 1


def test_the_sampling_precision_reaches_trials_and_is_checked(tmp_path):
    from orchestration.sweep import build_parser, config_from_args
    from orchestration.trainable import TrialContext, trial_params

    assert CPU_DEMO.sampling_precision == "auto"
    cfg = config_from_args(build_parser().parse_args(["--sampling-precision", "no"]))
    assert cfg.sampling_precision == "no" and cfg.params()["sampling_precision"] == "no"
    ctx = TrialContext(sweep=cfg, phase="grid", data_root="", epochs=1, epoch_images=64)
    _, params = trial_params(grid_trials(cfg)[0].resolved(cfg).params(), ctx)
    assert params["sampling_precision"] == "no"
    with pytest.raises(SweepError, match="--sampling-precision"):
        resolve("cpu-demo", sampling_precision="fp16")
    out = sweep("--dry-run", cwd=tmp_path)
    assert out.returncode == 0 and "guidance 4, precision auto (bf16 where the device has it natively)" in out.stdout


def test_study_dry_run_states_the_protocol(tmp_path):
    out = sweep("--preset", "study", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "selection: est_acc (max)" in out.stdout
    assert "linear betas 1e-4..0.02 for every T, unscaled" in out.stdout
    assert "sampling: ddpm, T steps (the full chain), sigma^2 = beta_t" in out.stdout
    assert "1,300,000 at T=10000 network evaluations" in out.stdout  # (100 scored + 30 grid) x 10,000 per epoch
    rescaled = sweep("--preset", "study", "--beta-rescale", "--sampling-steps", "50", "--dry-run", cwd=tmp_path)
    assert "rescaled by 1000/T" in rescaled.stdout and "50 steps" in rescaled.stdout


def test_the_noise_schedule_line_names_the_betas_each_family_trains_with():
    from orchestration.grid import protocol_lines, schedule_description

    assert schedule_description(resolve("cpu-demo", model="pixel-text")).startswith("linear betas 1e-4..0.02")
    lora = schedule_description(resolve("cpu-demo", model="if-lora"))
    assert "cosine" in lora and "linear" not in lora  # IF's own schedule, not the study's linear betas
    joint = next(line for line in protocol_lines(resolve("cpu-demo", model="all")) if line.startswith("noise"))
    assert "ddpm, pixel-text: linear betas 1e-4..0.02" in joint and "T = 1,000, 10,000" in joint
    assert "sd-lora: the base's scaled-linear betas" in joint and "if-lora: the base's cosine schedule" in joint


def test_dry_run_lists_both_families_40_trials(tmp_path):
    out = sweep("--model", "ddpm,sd-lora", "--preset", "study", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(table_rows(out.stdout)) == 40
    assert "40 trials (ddpm + sd-lora)" in out.stdout


def test_model_all_is_every_registered_family_in_order(tmp_path):
    from data.catalogue import FAMILIES
    from models.families import FAMILIES as REGISTERED
    from orchestration.config import SWEEP_FAMILIES

    assert list(FAMILIES) == list(REGISTERED) == list(SWEEP_FAMILIES)  # one entry per family in each registry
    cfg = resolve("study", model="all")
    assert cfg.families == FAMILIES and "pixel-text" in FAMILIES
    out = sweep("--model", "all", "--preset", "study", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    per_family = {f: len(grid_trials(cfg.for_family(f))) for f in FAMILIES}
    assert per_family["pixel-text"] == per_family["ddpm"] == 16  # the DDPM's axes: GA x T x Min-SNR x channels
    assert per_family["if-lora"] == per_family["sd-lora"] == 24  # SD + LoRA's axes: GA x T x Min-SNR x rank
    assert len(table_rows(out.stdout)) == sum(per_family.values())
    assert f"{sum(per_family.values())} trials ({' + '.join(FAMILIES)})" in out.stdout
    assert "pixel-text base: the CLIP text encoder of bguisard/stable-diffusion-nano-2-1" in out.stdout
    tiny = sweep("--model", "pixel-text", "--preset", "cpu-demo", "--dry-run", cwd=tmp_path)
    assert "tiny offline SD base 'cpu-16'" in tiny.stdout and "--pretrained" in tiny.stdout
    assert "if-lora base: DeepFloyd/IF-I-M-v1.0 (pretrained DeepFloyd IF stage I base)" in out.stdout
    tiny_if = sweep("--model", "if-lora", "--preset", "cpu-demo", "--dry-run", cwd=tmp_path)
    assert "tiny offline IF base 'cpu-16'" in tiny_if.stdout and "--if-pretrained" in tiny_if.stdout


def test_augment_axis_multiplies_the_grid(tmp_path):
    cfg = resolve("study", augment_axis=("none", "study", "study-no-color"))
    trials = grid_trials(cfg)
    assert len(trials) == 48 and {t.augment for t in trials} == {"none", "study", "study-no-color"}
    out = sweep("--preset", "study", "--augment-axis", "none,study-no-color", "--dry-run", cwd=tmp_path)
    assert len(table_rows(out.stdout)) == 32 and "study-no-color" in out.stdout
    bad = sweep("--augment-axis", "sepia", "--dry-run", cwd=tmp_path)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_study_preset_selects_as_the_study_did():
    assert STUDY.select_metric == "est_acc" and not STUDY.beta_rescale
    assert STUDY.sampler == "ddpm" and STUDY.sampling_steps == 0 and STUDY.ddpm_variance == "fixed_large"
    # train_loss is Min-SNR-weighted differently per trial: reported, never a ranking metric
    from data.catalogue import SELECTABLE

    assert "train_loss" not in SELECTABLE


def test_resume_finds_the_sweep_it_is_told_and_lists_ambiguity(tmp_path, capsys):
    import time

    from orchestration.driver import resume_config
    from orchestration.state import SweepState

    cfg = resolve("smoke", storage_path=str(tmp_path))
    old = SweepState.create(cfg, "sqlite:///x.db")
    time.sleep(1.1)
    new = SweepState.create(cfg, "sqlite:///x.db")
    new.done("sweep", True)
    # the newer one finished: --resume still finds the older, unfinished one
    assert SweepState.find(cfg).root == old.root
    third = SweepState.create(cfg, "sqlite:///x.db")
    with pytest.raises(SweepError, match="2 unfinished sweeps") as err:
        SweepState.find(cfg)
    assert old.root.name in str(err.value) and third.root.name in str(err.value)
    assert SweepState.find(cfg, third.root.name).root == third.root
    assert SweepState.find(cfg, str(old.root)).root == old.root
    with pytest.raises(SweepError, match="finished"):
        SweepState.find(cfg, new.root.name)
    # flags that are not runtime settings are named as ignored, not silently dropped
    asked = dataclasses.replace(cfg, epochs=7, max_concurrent=3, resume=True)
    merged, state = resume_config(asked, old.root.name, {"epochs", "max_concurrent"})
    assert merged.epochs == cfg.epochs and merged.max_concurrent == 3 and state.root == old.root
    assert "ignored: --epochs 7 (the sweep has 1)" in capsys.readouterr().out


def test_a_file_uri_storage_path_is_the_directory_it_names(tmp_path, monkeypatch):
    """--storage-path file:///x is /x (never ./file:/x under the working directory), for a new sweep and --resume."""
    from orchestration.state import SweepState
    from orchestration.sweep import check_storage

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "shared" / "results"
    for uri in (target.as_uri(), f"file://localhost{target}"):
        cfg = resolve("smoke", storage_path=uri)
        check_storage(cfg.storage_path)
        state = SweepState.create(cfg, "sqlite:///x.db")
        assert state.root.parent == target, state.root
        assert SweepState.find(dataclasses.replace(cfg, resume=True), state.root.name).root == state.root
        state.done("sweep", True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"], "a storage path became a relative folder"


def test_resume_keeps_the_final_run_on_the_trainer_it_started_on(tmp_path, capsys):
    """--final-workers 1 trains the final run in a Tune trial, more in Ray Train; neither reads the other's
    checkpoints, so a final run cut short is never switched: a named change is refused (one line, both values, the
    fix), an unnamed flag keeps the sweep's value (the preset's default would switch it)."""
    from orchestration.driver import resume_config
    from orchestration.state import SweepState

    cfg = resolve("smoke", storage_path=str(tmp_path), final_workers=2)
    state = SweepState.create(cfg, "sqlite:///x.db")
    state.done("ddpm/grid", {})
    state.start("ddpm/final")  # cut short while Ray Train trained it
    one = dataclasses.replace(cfg, final_workers=1, resume=True)
    with pytest.raises(SweepError) as refused:
        resume_config(one, state.root.name, {"final_workers"})
    message = str(refused.value)
    assert "\n" not in message and "--final-workers 1 would restart the ddpm final run" in message, message
    assert message.endswith("resume with --final-workers 2 or without the flag"), message
    merged, _ = resume_config(one, state.root.name, set())  # the flag not named: the preset's 1 is not a request
    assert merged.final_workers == 2 and "--resume keeps --final-workers 2" in capsys.readouterr().out
    merged, _ = resume_config(dataclasses.replace(one, final_workers=4), state.root.name, {"final_workers"})
    assert merged.final_workers == 4, "2 -> 4 workers stays on Ray Train, which restores its own checkpoint"
    assert SweepState.load(state.root).config.final_workers == 4, "the sweep records what its final runs train with"
    state = SweepState.load(state.root)
    state.done("ddpm/final", {})  # no final run cut short: any value is honoured
    merged, _ = resume_config(one, state.root.name, {"final_workers"})
    assert merged.final_workers == 1


def test_resource_plan_fits_one_node():
    from orchestration.resources import plan_resources

    two_cpu_nodes = ({"cpu": 2.0, "gpu": 0.0}, {"cpu": 2.0, "gpu": 0.0})
    plan = plan_resources(CPU_DEMO, two_cpu_nodes)
    assert plan.lone == {"cpu": 2.0, "gpu": 0.0}  # one node's CPUs, never the cluster's 4 (a task cannot span nodes)
    with pytest.raises(SweepError, match="no node has that much"):
        plan_resources(dataclasses.replace(CPU_DEMO, cpus_per_trial=3.0), two_cpu_nodes)
    gpu_nodes = ({"cpu": 8.0, "gpu": 1.0}, {"cpu": 8.0, "gpu": 1.0})
    plan = plan_resources(STUDY, gpu_nodes)
    assert plan.grid == {"cpu": 8.0, "gpu": 1.0} and plan.lone == {"cpu": 8.0, "gpu": 1.0}  # the node's CPUs per GPU
    with pytest.raises(SweepError, match="trials would wait forever"):
        plan_resources(dataclasses.replace(STUDY, gpus_per_eval_actor=1.0, eval_actors=2), gpu_nodes)
    with pytest.raises(SweepError, match="no node has one"):
        plan_resources(dataclasses.replace(CPU_DEMO, gpus_per_eval_actor=0.5), two_cpu_nodes)


@pytest.mark.slow
def test_an_error_inside_a_ray_task_reaches_the_user_as_one_line(tmp_path, data):
    """A bad --pretrained is found where the base is first loaded: inside a Ray task (the reference row)."""
    out = sweep_command("--preset", "smoke", "--model", "sd-lora", "--data", str(data), "--pretrained",
                str(tmp_path / "no-such-base"), "--no-dashboard", "--local-cpus", "1", "--storage-path",
                str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "no-such-base" in lines[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


def test_reference_rows_are_keyed_by_everything_they_depend_on(tmp_path, monkeypatch):
    """A cached untrained row from another base or sampler is never reused; an identical one is."""
    from types import SimpleNamespace

    import orchestration.phases.references as references
    from orchestration.tracking.client import Tracker

    calls = []

    def fake(cfg, data_root, eval_config, resources, rows):
        calls.append((cfg.sampler, cfg.pretrained))
        return {"untrained": {"est_acc": 0.1 * len(calls)}}, {}, {}

    monkeypatch.setattr(references, "compute_references", fake)
    monkeypatch.setattr(references, "plan_resources", lambda cfg: SimpleNamespace(lone={"cpu": 1.0}))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = Tracker(uri, "keys")
    parent = tracker.open_run("p", "p")
    sweep = SimpleNamespace(tracker=tracker, parent=parent, data_root=str(tmp_path), cfg=resolve("smoke"),
                            eval_config=SimpleNamespace(estimator="e", inception_weights=None, clip_model=None,
                                                        mtcnn=False))
    base = resolve("smoke", model="sd-lora")
    tags = {"condface.family": "sd-lora"}
    first = references.family_reference(False, sweep, base, tags)
    again = references.family_reference(False, sweep, base, tags)
    other_sampler = references.family_reference(False, sweep, dataclasses.replace(base, sampler="ddim"), tags)
    other_base = references.family_reference(False, sweep, dataclasses.replace(base, pretrained=str(tmp_path)), tags)
    assert first == again and len(calls) == 3  # identical: reused; another sampler or base: computed anew
    assert len({first["est_acc"], other_sampler["est_acc"], other_base["est_acc"]}) == 3
