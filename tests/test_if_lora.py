"""DeepFloyd IF stage I + LoRA: LoRA placement, frozen base, learned-variance handling, the T5 caption cache,
LoRA-only save/load, the tiny base's real folder layout, and drawing from it as an MLflow model.

Everything runs on the `test` tiny IF base (16 px, IF stage I's classes, ~0.2M parameters) built in a
temporary folder from the same diffusers/transformers classes as the real IF-I-M, and loaded through the
same `IFPipeline.from_pretrained` path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import IFPipeline
from diffusers.models.attention_processor import Attention

from models.engine import TrainConfig, fit
from models.errors import ConfigError
from models.families import build_family, family_config
from models.if_family import CaptionEmbeddings
from models.if_lora import IF_LORA_TARGETS, IFLoRAFamily, load_base, load_pipeline
from models.sampling import generate
from models.tiny_if_base import PRESETS as TINY
from models.tiny_if_base import ensure_tiny_if_base
from tests.models_helpers import FACE_SIZE, captioned_faces


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return captioned_faces(32)


@pytest.fixture(scope="module")
def base(tmp_path_factory, items) -> str:
    path, description = ensure_tiny_if_base(TINY["test"], root=tmp_path_factory.mktemp("if") / "base", dataset=items)
    assert "tiny offline IF base" in description and "not DeepFloyd IF-I-M" in description
    return str(path)


def family(base: str, **overrides) -> IFLoRAFamily:
    config = family_config("if-lora", "test", pretrained=base, image_size=FACE_SIZE, **overrides)
    return build_family("if-lora", config, seed=0, verbose=False)


def one_step(fam: IFLoRAFamily, items: list[dict], **overrides) -> None:
    cfg = dict(epochs=1, batch_size=8, lr=1e-2, val_samples=0, ema=False, max_steps_per_epoch=1, progress=False,
               verbose=False)
    fit(fam, TrainConfig(**{**cfg, **overrides}), items)


def test_the_tiny_base_is_an_if_pipeline_folder_loaded_by_the_real_loading_code(base, items):
    index = json.loads((Path(base) / "model_index.json").read_text())
    assert index["_class_name"] == "IFPipeline"
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert index["tokenizer"][1].startswith("T5Tokenizer")
    pipe, description = load_base(family_config("if-lora", "test", pretrained=base))
    assert isinstance(pipe, IFPipeline) and "tiny offline IF base" in description
    unet = pipe.unet.config
    assert (unet.in_channels, unet.out_channels) == (3, 6)  # epsilon + learned variance, as IF stage I
    assert unet.addition_embed_type == "text" and unet.encoder_hid_dim_type == "text_proj"
    assert unet.mid_block_type == "UNetMidBlock2DSimpleCrossAttn"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    lengths = [len(ids) for ids in pipe.tokenizer([item["caption"].lower() for item in items]).input_ids]
    assert max(lengths) <= 77  # every caption fits IF's 77 tokens whole (its last sentence is the age)
    with pytest.raises(ConfigError, match="cannot load the IF stage I base .* offline"):
        load_base(family_config("if-lora", "study"))  # the real hub id, offline and not in the cache


def test_lora_sits_on_every_attention_projection_including_the_text_keys_and_values(base):
    fam = family(base, rank=4)
    unet = fam.module
    expected = {f"{name}.{proj}" for name, mod in unet.named_modules() if isinstance(mod, Attention)
                for proj in IF_LORA_TARGETS}
    adapted = {name for name, mod in unet.named_modules() if hasattr(mod, "lora_A")}
    assert adapted == expected and any(n.endswith("add_k_proj") for n in adapted)
    trainable = fam.trainable_parameters()
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any(p.requires_grad for p in fam.text_encoder.parameters())
    expected_count = sum(4 * (m.in_features + m.out_features) for n, m in unet.named_modules() if n in expected)
    assert fam.parameter_counts()["trainable"] == expected_count


def test_a_training_step_changes_only_lora_weights(base, items):
    fam = family(base)
    nets = {"unet": fam.module, "text": fam.text_encoder}
    before = {f"{k}.{n}": p.detach().clone() for k, net in nets.items() for n, p in net.named_parameters()}
    one_step(fam, items)
    after = {f"{k}.{n}": p.detach() for k, net in nets.items() for n, p in net.named_parameters()}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    lora_b = {n for n in before if ".lora_B." in n}
    assert lora_b and lora_b <= changed  # B starts at zero, so the first step moves every B
    assert all(".lora_" in n for n in changed)


def test_training_regresses_epsilon_only_and_samplers_use_a_fixed_variance(base, items):
    fam = family(base)
    x = torch.randn(2, 3, FACE_SIZE, FACE_SIZE)
    cond = {"encoder_hidden_states": fam.encode_captions(["a", ""])}
    t = torch.tensor([10, 900])
    with torch.no_grad():
        full = fam.module(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample
        assert full.shape[1] == 6
        torch.testing.assert_close(fam.predict(x, t, cond), full[:, :3])
    assert fam.noise_scheduler.config.variance_type == "fixed_small"
    assert fam.prediction_type == "epsilon"
    captions = [item["caption"] for item in items[:2]]
    for sampler in ("ddpm", "ddim", "dpm++"):
        images = generate(fam, None, captions, 3.0, 3, seed=0, scheduler=sampler)
        assert images.shape == (2, FACE_SIZE, FACE_SIZE, 3) and images.dtype == np.uint8


def test_t5_embeddings_are_computed_once_per_distinct_caption_and_match_the_pipeline(base, items):
    fam = family(base)
    calls = []
    hook = fam.text_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        captions = [item["caption"] for item in items[:4]] * 2 + [""]
        first = fam.encode_captions(captions)
        assert calls == [5] and (fam.captions.hits, fam.captions.misses) == (4, 5)
        again = fam.encode_captions(captions[:4] + [""])
        assert calls == [5] and fam.captions.misses == 5  # nothing encoded twice
        torch.testing.assert_close(again, first[[0, 1, 2, 3, 8]])
    finally:
        hook.remove()
    # bounded: the least recently used embeddings go, and a batch whose rows get evicted still gets them all
    row_bytes = first[0].numel() * first[0].element_size()
    small = CaptionEmbeddings(fam._encode, max_bytes=2 * row_bytes)
    small(captions[:2])
    torch.testing.assert_close(small([captions[2], captions[0], captions[3]]), first[[2, 0, 3]])
    assert small.bytes <= 2 * row_bytes and list(small.table) == [captions[0], captions[3]]
    # exactly what IFPipeline encodes for the prompt, and for the default negative prompt (the empty caption)
    prompt, negative = fam.pipeline().encode_prompt(captions[:1], do_classifier_free_guidance=True)
    torch.testing.assert_close(first[:1], prompt)
    torch.testing.assert_close(first[8:], negative)


def test_lora_save_then_load_onto_a_fresh_base_reproduces_samples(base, items, tmp_path):
    fam = family(base, rank=2)
    one_step(fam, items, lr=5e-2)
    kwargs = dict(levels=None, captions=[item["caption"] for item in items[:3]], guidance_scale=3.0,
                  num_inference_steps=4, seed=7, scheduler="ddim")
    trained = generate(fam, **kwargs)
    fam.save_pretrained(tmp_path / "lora")
    files = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert files == ["condface_if_lora.json", "pytorch_lora_weights.safetensors"]  # only the adapters
    np.testing.assert_array_equal(generate(load_pipeline(tmp_path / "lora", sampler="ddim"), **kwargs), trained)
    assert not np.array_equal(generate(family(base, rank=2), **kwargs), trained)  # the base itself differs
    with pytest.raises(ConfigError, match="holds no sd-lora weights"):
        from models.sd_lora import load_pipeline as load_sd

        load_sd(tmp_path / "lora")


def test_an_if_lora_is_an_mlflow_model_that_models_generate_draws_from(base, items, tmp_path):
    from models.generate import main as generate_main
    from models.mlflow_model import load_resolved, resolve_folder, save_model

    fam = family(base)
    one_step(fam, items)
    fam.save_pretrained(tmp_path / "lora")
    flavor = save_model(tmp_path / "mlflow", tmp_path / "lora", guidance_scale=2.0, sampler="ddim",
                        num_inference_steps=3)
    assert flavor == "pyfunc"
    resolved = resolve_folder(tmp_path / "mlflow")
    assert resolved.family == "if-lora" and (tmp_path / "mlflow" / "artifacts" / "base" / "model_index.json").is_file()
    assert isinstance(load_resolved(resolved, sampler="ddim"), IFPipeline)
    generate_main(["--model", str(tmp_path / "mlflow"), "--smiling", "5", "-n", "2", "--out",
                   str(tmp_path / "faces.png")])
    from PIL import Image

    assert Image.open(tmp_path / "faces.png").size[0] >= 2 * FACE_SIZE


def test_bad_settings_are_one_line_errors(base):
    with pytest.raises(ConfigError, match="beta_rescale"):
        family(base, beta_rescale=True, num_train_timesteps=10_000)  # IF's cosine schedule
    with pytest.raises(ConfigError, match="unknown if-lora preset"):
        family_config("if-lora", "nope")
    with pytest.raises(ConfigError, match="works at 16px"):
        family_config("if-lora", "test", pretrained=None, image_size=64)
    fam = family(base)
    with pytest.raises(ConfigError, match="set up for 16px"):
        fam.training_inputs({"image": torch.zeros(1, 3, 32, 32), "caption": ["a"]}, torch.zeros(1, dtype=torch.bool),
                            torch.Generator())


def test_in_the_joint_smoke_sweep_it_trains_selects_retrains_sweeps_guidance_registers_and_reports(joint_sweep):
    """`--model if-lora` end to end in the shared smoke sweep of every family (2 trials x 1 epoch at 16 px) on the
    tiny offline IF base, which the tags and the report say."""
    import mlflow
    import pandas as pd

    cfg, out, client = joint_sweep["cfg"], joint_sweep["out"], joint_sweep["client"]
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    by_phase: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get("condface.family") == "if-lora":
            by_phase.setdefault(run.data.tags["condface.phase"], []).append(run)
            assert run.info.status == "FINISHED", run.info.run_name
    # trained: one trial per LoRA rank, only the adapters train, the tiny stand-in named in the tags
    assert sorted(int(r.data.params["trial.lora_rank"]) for r in by_phase["grid"]) == list(cfg.lora_ranks)
    for run in by_phase["grid"]:
        assert run.data.tags["condface.base"].startswith("tiny offline IF base 'test'")
        assert int(run.data.params["built.params_trainable"]) < int(run.data.params["built.params_unet"])
    # selected, retrained, swept over guidance
    fam = out["families"]["if-lora"]
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["condface.best_config.if-lora"] == fam["grid"]["best_label"]
    # the joint parent names each family's base (not only the last family's)
    assert parent.data.tags["condface.base.if-lora"].startswith("tiny offline IF base 'test'")
    assert parent.data.tags["condface.base.sd-lora"].startswith("tiny offline SD base 'test'")
    assert "condface.base" not in parent.data.tags and "condface.base.ddpm" not in parent.data.tags
    (final,) = by_phase["final"]
    assert final.info.run_id == fam["final"]["run_id"] and "final_est_acc" in final.data.metrics
    assert [r["guidance_scale"] for r in fam["cfg"]["rows"]] == list(cfg.cfg_scales)
    # registered: the champion is an MLflow model (its tiny base inside) that draws a face for a prompt
    version = client.get_model_version_by_alias("condface-if-lora", "champion")
    assert f"models:/condface-if-lora/{version.version}" == fam["final"]["model_uri"]
    mlflow.set_registry_uri(cfg.tracking_uri)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/condface-if-lora@champion")
    prompt = "A smiling woman with big bangs."
    drawn = model.predict(pd.DataFrame({"prompt": [prompt]}), params={"num_inference_steps": 2})
    assert list(drawn["prompt"]) == [prompt] and len(drawn["image"][0]) > 100
    # reported: its final column, its untrained (base) row, its parameter counts
    report = (out["state"].root / "report" / "report.md").read_text()
    assert "if-lora final" in report and "IF base (no LoRA)" in report and "| if-lora (" in report


def real_tokenizer_layout(base: str, folder: Path, spiece_model: bytes) -> Path:
    """A copy of the tiny base whose tokenizer folder is laid out as the real IF-I-M's: spiece.model, no
    tokenizer.json."""
    import shutil

    shutil.copytree(base, folder)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "spiece.model").write_bytes(spiece_model)
    return folder


def test_a_real_layout_tokenizer_without_sentencepiece_is_a_one_line_error_naming_it(base, tmp_path, monkeypatch):
    import transformers.utils

    from models.superres import SuperResUnavailable, load_superres

    folder = real_tokenizer_layout(base, tmp_path / "real-layout", b"not read: sentencepiece is missing")
    monkeypatch.setattr(transformers.utils, "is_sentencepiece_available", lambda: False)
    with pytest.raises(ConfigError, match=r"needs the sentencepiece package.*`pip install sentencepiece`"):
        load_base(family_config("if-lora", "test", pretrained=str(folder)))
    with pytest.raises(SuperResUnavailable, match="needs the sentencepiece package"):
        load_superres(str(folder))


def test_a_real_layout_sentencepiece_tokenizer_loads_with_the_real_loading_code(base, items, tmp_path):
    from transformers.utils import is_sentencepiece_available

    from tests.tools import require

    require(is_sentencepiece_available(), "sentencepiece is not installed (a pyproject dependency): pip install -e .")
    import sentencepiece

    captions = [item["caption"].lower() for item in items]
    (tmp_path / "captions.txt").write_text("\n".join(captions))
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp_path / "captions.txt"), model_prefix=str(tmp_path / "spiece"), vocab_size=64, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)  # T5's special ids
    folder = real_tokenizer_layout(base, tmp_path / "real-layout", (tmp_path / "spiece.model").read_bytes())
    pipe, _ = load_base(family_config("if-lora", "test", pretrained=str(folder)))
    ids = pipe.tokenizer(captions[:2]).input_ids
    expected = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model")).encode(captions[:2])
    assert ids == [row + [1] for row in expected]  # T5 appends </s>
    embeds = pipe.encode_prompt(captions[:2], do_classifier_free_guidance=False, clean_caption=False)[0]
    assert embeds.shape[:2] == (2, 77)


def test_offline_base_is_the_cached_tiny_base_a_config_falls_back_to_and_none_for_real_weights(base, items):
    from models.families import family_spec
    from models.tiny_base import BASE_INFO_FILE

    built, _ = ensure_tiny_if_base(TINY["test"], dataset=items)  # into this session's $CONDFACE_HOME cache
    spec = family_spec("if-lora")
    assert spec.offline_base(family_config("if-lora", "test")) == built  # the cached base, not rebuilt
    assert (built / BASE_INFO_FILE).is_file()
    assert spec.offline_base(family_config("if-lora", "test", pretrained=base)) is None
    assert spec.offline_base(family_config("if-lora", "study")) is None  # a hub id: nothing built, nothing loaded
    for model in ("sd-lora", "pixel-text"):
        assert family_spec(model).offline_base(family_config(model, "study")) is None
    assert family_spec("ddpm").offline_base is None  # trained from scratch: no base
