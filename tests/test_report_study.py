"""The report's fidelity to the study, on small records written straight into a real MLflow store (nothing is
trained): the study's conclusions checked against the seed spread, Figures 4.1/4.2 showing the study's choice,
Figure 4.10 never faked, the protocol naming this project's choices, the source's own contradictions shown; and
Figures 3.2 / 3.3 drawn through the real data loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_report_layout import _artifact, _child


def _final(client, exp, parent, family: str, seed: int, acc: float, fd: float, n: int = 100) -> None:
    run = _child(client, exp, parent, "final", family, f"final:{family}-s{seed}")
    client.log_param(run, "train.seed", seed)
    for key, value in {"final_est_acc": acc, "final_est_acc_n": n, "final_est_acc_balanced": acc - 0.1,
                       "final_fd_estimator": fd, "final_fd_estimator_n": n, "final_evaluated": 1}.items():
        client.log_metric(run, key, value)
    client.log_metric(run, "est_acc", acc, step=1)
    client.set_terminated(run)


def _grid(client, exp, parent, family: str, name: str, fd: list[float], tmp: Path) -> None:
    run = _child(client, exp, parent, "grid", family, f"grid:{name}")
    for epoch, value in enumerate(fd, 1):
        client.log_metric(run, "fd_estimator", value, step=epoch)
        client.log_metric(run, "val_loss", 1.0 / epoch, step=epoch)
    _artifact(client, run, tmp, f"samples/epoch_{len(fd):04d}/samples.png")
    client.set_terminated(run)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """One sweep of ddpm (seeds 0, 1) and sd-lora (seeds 0, 1) on the embedded default, whose selected grid trial
    is not its best-FD one; sd-lora's super-resolution run recorded unavailable."""
    from mlflow.tracking import MlflowClient

    from orchestration.report.record import Record

    tmp = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("study")
    parent = client.create_run(exp, run_name="sweep/s", tags={"condface.phase": "sweep"}).info.run_id
    params = {"model": "ddpm,sd-lora", "preset": "cpu-demo", "data": "toy", "final_epochs": "6", "lr": "0.002",
              "lr_schedule": "cosine", "lr_warmup_steps": "none", "superres": "/nowhere/IF-II"}
    for key, value in params.items():
        client.log_param(parent, key, value)
    for family in ("ddpm", "sd-lora"):
        _grid(client, exp, parent, family, f"{family}-best-fd", [40.0, 10.0], tmp)
        _grid(client, exp, parent, family, f"{family}-selected", [30.0, 20.0], tmp)
        client.set_tag(parent, f"condface.best_config.{family}", f"{family}-selected")
    client.set_tag(parent, "condface.select_metric", "val_loss")
    # ddpm beats sd-lora on accuracy by more than either's seed spread; on fd_estimator by less
    _final(client, exp, parent, "ddpm", 0, 0.60, 10.0)
    _final(client, exp, parent, "ddpm", 1, 0.62, 14.0)
    _final(client, exp, parent, "sd-lora", 0, 0.40, 12.0)
    _final(client, exp, parent, "sd-lora", 1, 0.43, 13.0)
    vae = _child(client, exp, parent, "vae", "sd-lora", "sd-lora: VAE tuned at 16px")
    client.log_param(vae, "eval_samples", 100)
    for key, value in {"base_vae.psnr": 11.4, "tuned_vae.psnr": 11.9, "base_vae.fd_estimator": 9.0,
                       "tuned_vae.fd_estimator": 8.0, "base_vae.est_acc": 0.30, "tuned_vae.est_acc": 0.34}.items():
        client.log_metric(vae, key, value, step=0)
    client.set_terminated(vae)
    sr = _child(client, exp, parent, "superres", "sd-lora", "sd-lora: super-resolution")
    client.set_tag(sr, "condface.unavailable.superres", "IF stage II weights not loadable from folder /nowhere")
    client.set_terminated(sr)
    client.set_terminated(parent)
    return Record.load(uri, "study")


def test_conclusions_compare_against_the_seed_spread_and_name_what_is_absent(record):
    from orchestration.report.conclusions import conclusions_section

    blocks = conclusions_section(record)
    assert blocks[0][0] == "p" and "stand-ins, not the real models" in blocks[0][1]
    assert "cpu-demo" in blocks[0][1] and "synthetic faces" in blocks[0][1]
    table = blocks[-1][1]
    rows = [[c.text for c in row] for row in table.rows]
    acc = next(r for r in rows if r[1] == "est_acc")
    assert acc[2].startswith("61.00%") and "seed 0: 60.00%" in acc[2] and "seed 1: 62.00%" in acc[2]
    assert acc[3].startswith("41.50%") and acc[4] == "19.50%"
    assert "favours the first" in acc[5] and "exceeds the seed-to-seed spread (3.00%)" in acc[5]
    fd = next(r for r in rows if r[1] == "fd_estimator")  # 12.0 vs 12.5: smaller than ddpm's spread of 4
    assert "favours the first" in fd[5] and "does not exceed the seed-to-seed spread (4.000)" in fd[5]
    assert [c.n for c in table.rows[rows.index(acc)][2:4]] == [100, 100]
    absent = [r for r in rows if r[5].startswith("not measured")]
    assert {("pixel-text" in r[5], "if-lora" in r[5]) for r in absent} == {(True, False), (False, True)}
    vae = rows[next(i for i, r in enumerate(rows) if r[0].startswith("tuned VAE vs base VAE")):]
    assert [r[1] for r in vae] == ["psnr", "fd_estimator", "est_acc"]  # what the vae phase logged, nothing more
    assert vae[0][2].startswith("11.90 dB") and vae[0][3].startswith("11.40 dB") and "favours the first" in vae[0][5]
    assert "favours the first" in vae[1][5]  # a lower distance is better
    assert "sampling standard error" in vae[2][5]
    assert all("the VAE is tuned once" in r[5] and "--final-seeds" not in r[5] for r in vae)  # seeds would not help


def test_without_a_vae_phase_the_vae_claim_says_how_to_measure_it(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestration.report.conclusions import vae_rows
    from orchestration.report.record import Record

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("novae")
    parent = client.create_run(exp, run_name="sweep/s", tags={"condface.phase": "sweep"}).info.run_id
    client.set_terminated(parent)
    (row,) = vae_rows(Record.load(uri, "novae"))
    assert "not measured" in row[5].text and "--tune-vae" in row[5].text


def test_one_seed_says_the_spread_was_not_measured():
    from orchestration.report.conclusions import Measured, verdict

    text = verdict("est_acc", Measured({0: 0.6}, 100), Measured({0: 0.5}, 100))
    assert "seed-to-seed spread not measured" in text
    assert "1.4 x the sampling standard error (7.00%)" in text  # sqrt(.24/100 + .25/100) = 0.07


def test_figures_4_1_and_4_2_show_the_studys_choice_and_say_which(record):
    from orchestration.report.document import Report
    from orchestration.report.figures import grid_samples

    figs = {f.key: f for f in grid_samples(record, Report("t"))}
    for key, family in (("4.1", "ddpm"), ("4.2", "sd-lora")):
        panels = figs[key].panels
        assert panels[0].caption.startswith(f"{family}: {family}-best-fd (the study's choice: best fd_estimator)")
        assert panels[0].png is not None and panels[1].png is not None
        assert panels[1].caption.startswith(f"{family}: {family}-selected (selected by val_loss)")
        assert "FID unavailable: its stand-in" in figs[key].caption and "10.000 at epoch 2" in figs[key].caption


def test_figure_4_10_is_unavailable_with_its_reason_never_faked(record):
    from orchestration.report.superres import superres_section

    figure = superres_section(record)[0][1]
    assert figure.key == "4.10" and all(p.png is None for p in figure.panels)
    missing = {p.caption.split(":")[0]: p.missing for p in figure.panels}
    assert missing["sd-lora"] == "unavailable: IF stage II weights not loadable from folder /nowhere"
    assert missing["ddpm"] == "unavailable: no super-resolution run recorded yet"


def test_superres_loader_says_why_it_cannot_run(tmp_path):
    from models.superres import SuperResUnavailable, load_superres

    with pytest.raises(SuperResUnavailable, match="not a folder here nor in the local Hugging Face cache"):
        load_superres("DeepFloyd/IF-II-M-v1.0-not-cached")
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(SuperResUnavailable, match=f"folder {tmp_path}"):
        load_superres(str(tmp_path))
    from orchestration.phases.superres import _superres  # the phase records the reason, before any sampling

    assert _superres("ddpm", str(tmp_path / "no-pipeline"), str(tmp_path), 0, 3.0, "dpm++", 4, "fixed_small", "no",
                     str(tmp_path), threads=1) == (None, None, load_reason(tmp_path))


def load_reason(folder) -> str:
    from models.superres import SuperResUnavailable, load_superres

    try:
        load_superres(str(folder))
    except SuperResUnavailable as err:
        return str(err)
    return ""


def _tiny_if_stage_ii(folder, captions):
    """A DeepFloyd IF stage II folder of the real layout (model_index.json, T5 tokenizer and encoder, a 6-channel
    U-Net with noise-level class embeddings, two DDPM schedulers), tiny and untrained, built offline."""
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.train_from_iterator(captions, trainers.UnigramTrainer(special_tokens=["<pad>", "</s>", "<unk>"],
                                                              unk_token="<unk>", vocab_size=64))
    tokenizer = T5TokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                extra_ids=0)
    encoder = T5EncoderModel(T5Config(vocab_size=raw.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                      num_heads=4))
    unet = UNet2DConditionModel(sample_size=32, in_channels=6, out_channels=6, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8, class_embed_type="timestep")
    pipe = IFSuperResolutionPipeline(tokenizer=tokenizer, text_encoder=encoder, unet=unet,
                                     scheduler=DDPMScheduler(variance_type="learned_range"),
                                     image_noising_scheduler=DDPMScheduler(), safety_checker=None,
                                     feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def test_superres_upscales_with_a_folder_of_the_real_layout(tmp_path):
    """The real loading path (IFSuperResolutionPipeline.from_pretrained, local files only) on a tiny untrained
    folder of IF stage II's layout: each image upscaled to the U-Net's sample size with its caption, seeded."""
    from models.superres import load_superres, upscale

    captions = ["a woman with bangs", "a smiling man with a beard"]
    pipe = load_superres(str(_tiny_if_stage_ii(tmp_path / "if-ii", captions)))
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = upscale(pipe, images, captions, seed=0, steps=2)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out, upscale(pipe, images, captions, seed=0, steps=2))


def test_protocol_names_this_projects_choices(record):
    import orchestration.config as config
    from orchestration.config import STUDY
    from orchestration.report.protocol import CHOICE, protocol_rows

    rows = {name: (ours, theirs) for name, ours, theirs in protocol_rows(record)}
    for setting in ("optimizer", "EMA of the weights (sampling uses it)", "gradient clipping",
                    "guidance scale of the per-epoch and final samples", "CFG scales swept (Figure 4.8)",
                    "DDPM sampler variance (also SD's)", "learning rate"):
        assert CHOICE in rows[setting][1], setting
    assert rows["learning rate"][0] == "0.002, cosine, warm-up 500 steps, at most a tenth of each run"
    assert STUDY.lr_schedule == "constant"
    assert CHOICE in rows["seeds of the final run"][1] and "2 in the study preset" in rows["seeds of the final run"][1]
    assert rows["seeds of the final run"][0] == "1 (seed 0): the seed-to-seed spread is not measured"  # no final_seeds
    for word in ("AdamW", "EMA", "clipping", "guidance_scale", "cfg_scales", "ddpm_variance", "lr_schedule",
                 "final_seeds"):
        assert word in config.__doc__, word


def test_the_sources_contradiction_and_sample_counts_are_shown(record, tmp_path):
    from orchestration.report import study_numbers as study
    from orchestration.report.build import build, references_section
    from orchestration.report.tables import Column

    table_3_1 = references_section([Column("ground truth", {"fd_estimator": 0.0}, samples=8.0)])[0][1]
    assert "100 samples each" not in " ".join(table_3_1.notes)
    assert "gives no sample count for these rows" in " ".join(table_3_1.notes)
    report = build(record)
    table_4_4 = next(t for t in report.tables if t.key == "4.4")
    assert study.DDPM_FINAL_ACC_NOTE in table_4_4.notes
    # two seeds of each family: Table 4.4 shows their mean and spread (ddpm 0.60 and 0.62 -> 61.00%, spread 2.00%)
    assert table_4_4.header[1:3] == ["ddpm final (mean of 2 seeds)", "sd-lora final (mean of 2 seeds)"]
    acc = next(row for row in table_4_4.rows if row[0].code == "est_acc")
    assert acc[1].text == "61.00% (spread 2.00%)" and acc[1].n == 100
    assert any("the mean over the final runs of seeds 0, 1" in n for n in table_4_4.notes)
    assert "84.8 %" in study.DDPM_FINAL_ACC_NOTE and "86.40 %" in study.DDPM_FINAL_ACC_NOTE
    figure_4_7 = next(p for k, p in report.blocks if k == "figure" and p.key == "4.7")
    assert study.DDPM_FINAL_ACC_NOTE in figure_4_7.caption
    source = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "000_e10f724a4b28bbeb.txt"
    if source.is_file():  # both numbers are the study's, as printed
        assert "84,8%" in source.read_text() and "86.40 %" in source.read_text()


def test_figures_3_2_and_3_3_come_from_the_data_and_the_real_augmentation(data, tmp_path):
    from data.cache import FaceCache
    from orchestration.data_figures import augment_policies, augmentation_draws, showcase_rows, write_dataset_figure

    cache = FaceCache.open(data)
    levels = np.asarray(cache.levels[cache.indices("train")])
    rows = showcase_rows(levels)
    assert len(set(rows)) == len(rows)
    for a in range(levels.shape[1]):  # every attribute is shown at its highest level
        assert levels[rows, a].max() == levels[:, a].max()
    assert write_dataset_figure(data, tmp_path).stat().st_size > 0

    assert augment_policies("none", ()) == ["study"] and augment_policies("study-no-color", ("none", "study")) == \
        ["study-no-color", "study"]
    images, labels = augmentation_draws(data, ["study"], seed=3)
    assert labels == ["original", "study, draw 1", "study, draw 2"] and len(images) == 3 * 6
    original, first, second = (np.stack(images[i * 6:(i + 1) * 6]) for i in range(3))
    assert not np.array_equal(original, first) and not np.array_equal(first, second)  # the pipeline ran, per epoch
    again, _ = augmentation_draws(data, ["study"], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(images, again))  # seeded as a run: reproducible
