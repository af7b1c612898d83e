"""CLIP score through torchmetrics on a tiny random CLIP model and a tokenizer trained here, saved locally."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from data.synthetic import draw_faces, sample_levels
from evaluation.config import EvalConfig
from evaluation.metrics.base import EvalBatch
from evaluation.metrics.clip import CaptionAgreement
from evaluation.scorer import Scorer


@pytest.fixture(scope="module")
def faces():
    levels = sample_levels(6, np.random.default_rng(0), "uniform")
    images, captions = draw_faces(levels, 16, seed=0, workers=1)
    return images, levels, captions


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, faces):
    out = tmp_path_factory.mktemp("clip") / "tiny-clip"
    tokenizer = CLIPTokenizer().train_new_from_iterator(faces[2] * 4, vocab_size=320)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=24, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def manual_mean_score(path, images: np.ndarray, captions: list[str]) -> float:
    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        text = processor(text=captions, return_tensors="pt", padding=True, truncation=True, max_length=24)
        img = model.get_image_features(pixel_values=pixels).pooler_output
        txt = model.get_text_features(**text).pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return float(100 * cos.mean())


def test_clip_score_matches_a_direct_computation(tiny_clip, faces):
    images, levels, captions = faces
    metric = CaptionAgreement(str(tiny_clip), torch.device("cpu"))
    metric.update(EvalBatch(images=torch.from_numpy(images).permute(0, 3, 1, 2),
                            levels=torch.from_numpy(levels), captions=captions))
    state = metric.state()
    assert int(state["n_samples"]) == len(images)
    expected = manual_mean_score(tiny_clip, images, captions)
    assert float(state["score"]) / len(images) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert metric.compute(state).values["clip_score"] == pytest.approx(max(expected, 0.0), rel=1e-4, abs=1e-4)


def test_scorer_reports_clip_score_with_its_count(tiny_clip, faces):
    images, levels, captions = faces
    result = Scorer(EvalConfig(clip_model=str(tiny_clip), mtcnn=False, device="cpu")).score(images, levels, captions)
    assert np.isfinite(result.values["clip_score"]) and result.counts["clip_score_n"] == len(images)
    without = Scorer(EvalConfig(clip_model=str(tiny_clip), mtcnn=False, device="cpu")).score(images, levels)
    assert "clip_score" not in without.values and "caption" in without.unavailable["clip_score"]


def test_missing_clip_weights_are_unavailable_not_a_number(tmp_path, faces):
    images, levels, captions = faces
    result = Scorer(EvalConfig(clip_model=str(tmp_path / "no-such-clip"), mtcnn=False, device="cpu")).score(
        images, levels, captions)
    assert "clip_score" not in result.values
    assert "no-such-clip" in result.unavailable["clip_score"]
