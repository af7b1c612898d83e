"""The study's published numbers, cited, for the report to print beside this project's.

Source: the 2023 master's thesis this project reproduces (Spanish; "Cuadro" = table). Its text is not in this
repository: the report tests check these numbers against it where a copy lies beside the checkout.
Units are the ones this project logs: estimator accuracy as a fraction (0.864 = 86.40 %), MTCNN as a
percent (99.97), FID and CLIP score as printed. The study reports the plain estimator accuracy only;
`est_acc_balanced`, `fd_estimator` and `val_loss` are this project's, so they have no study value.
"""

from __future__ import annotations

# A best value and the configuration that reached it: (value, "T, Min-SNR-gamma, GA, channels | r").
Best = tuple[float, str]

SOURCE = "the 2023 thesis, shared/seeds/000_e10f724a4b28bbeb.txt"

# Cuadro 3.1 (§3.5 Metodología): the metrics on an untrained DDPM, on SD Nano 2.1 before LoRA and on real
# validation images ("ground truth"); the study gives no sample count for them (its 100 is the final comparison's).
# Keys: (reference row, family) as logged.
TABLE_3_1: dict[tuple[str, str], dict[str, float]] = {
    ("untrained", "ddpm"): {"fid": 387.9992, "mtcnn": 0.83, "clip_score": 19.8594, "est_acc": 0.7060},
    ("untrained", "sd-lora"): {"fid": 339.9721, "mtcnn": 20.25, "clip_score": 22.9743, "est_acc": 0.7040},
    ("ground_truth", "real"): {"fid": 0.0, "mtcnn": 99.91, "clip_score": 24.1421, "est_acc": 0.8285},
}

# Cuadro 4.1 (§4.1): the DDPM grid (5 epochs per trial), best value of each metric and its configuration.
TABLE_4_1: dict[str, Best] = {
    "fid": (83.4184, "T 1e4, Min-SNR off, GA off, [256,512,768,768]"),
    "mtcnn": (99.88, "T 1e3, Min-SNR 5, GA off, [256,512,768,768]"),
    "clip_score": (24.5876, "T 1e3, Min-SNR off, GA off, [256,512,768,768]"),
    "est_acc": (0.8820, "T 1e3, Min-SNR off, GA off, [256,512,768,768]"),
}

# Cuadro 4.2 (§4.1): the DDPM grid's best value of each metric per channel set.
TABLE_4_2: dict[str, dict[str, float]] = {
    "small": {"fid": 98.3362, "mtcnn": 99.64, "clip_score": 24.3546, "est_acc": 0.8580},  # [128,256,512,512]
    "large": {"fid": 83.4184, "mtcnn": 99.88, "clip_score": 24.5876, "est_acc": 0.8820},  # [256,512,768,768]
}
TABLE_4_2_CHANNELS = {"small": "[128,256,512,512]", "large": "[256,512,768,768]"}

# Cuadro 4.3 (§4.2): the SD Nano 2.1 + LoRA grid, best value of each metric and its configuration.
TABLE_4_3: dict[str, Best] = {
    "fid": (144.8888, "T 1e4, Min-SNR off, GA off, r 2"),
    "mtcnn": (99.97, "T 1e3, Min-SNR 5, GA 4, r 4"),
    "clip_score": (25.3535, "T 1e3, Min-SNR 5, GA off, r 8"),
    "est_acc": (0.7280, "T 1e3, Min-SNR 5, GA off, r 4"),
}

# The configurations the study retrained for 15 epochs (chosen by estimator accuracy): §4.1 and §4.2.
SELECTED = {
    "ddpm": "GA off, T 1e3, Min-SNR off, [256,512,768,768] (§4.1)",
    "sd-lora": "GA off, T 1e3, Min-SNR 5, r 4 (§4.2)",
}

# Cuadro 4.4 (§4.3): both final models after 15 epochs, 100 samples each.
TABLE_4_4: dict[str, dict[str, float]] = {
    "ddpm": {"fid": 104.5163, "mtcnn": 99.97, "clip_score": 26.1205, "est_acc": 0.8640},
    "sd-lora": {"fid": 93.2055, "mtcnn": 99.89, "clip_score": 26.3395, "est_acc": 0.8040},
}

# §4.3, about Figura 4.7: estimator accuracy over the 15 final epochs (first -> last epoch).
FIGURE_4_7_EST_ACC: dict[str, tuple[float, float]] = {"ddpm": (0.732, 0.848), "sd-lora": (0.764, 0.804)}
# The study contradicts itself on the DDPM's final estimator accuracy: both are shown where either is cited.
DDPM_FINAL_ACC_NOTE = ("the study gives the DDPM's final estimator accuracy twice, differently: 86.40 % in Cuadro "
                       "4.4 and 84.8 % in its text on Figura 4.7 (§4.3, 'pasa de un 73,2% a un 84,8%'); both are "
                       "shown, neither is corrected (SD+LoRA's 80.40 % agrees in both)")

# §4.3 about Figura 4.9 and §3.1.2: parameters. SD Nano's U-Net has 865.91M (what a full fine-tune would
# train; "865.911K" in §3.1.2), LoRA r = 4 trains 830K of them; the DDPM trained 112.10M (said of the final
# [256,512,768,768] model, but diffusers' UNet2DModel with those channels has 284.9M and the small set 112.2M).
PARAMETERS: dict[str, dict[str, float]] = {
    "ddpm": {"trainable": 112.10e6},
    "sd-lora": {"unet": 865.91e6, "trainable": 830e3},
}

# §4.3, about Figura 4.8: 250 samples per guidance scale; scales 3 to 4 were the best trade-off.
CFG = {"samples": 250, "best_scales": "3-4"}

FINAL_SAMPLES = 100  # §3.5: the final comparison (the reference rows' count is not given)
GRID_EPOCHS, FINAL_EPOCHS = 5, 15  # §3.5, §4.3

__all__ = ["TABLE_3_1", "TABLE_4_1", "TABLE_4_2", "TABLE_4_2_CHANNELS", "TABLE_4_3", "TABLE_4_4", "SELECTED",
           "FIGURE_4_7_EST_ACC", "DDPM_FINAL_ACC_NOTE", "PARAMETERS", "CFG", "SOURCE", "FINAL_SAMPLES", "GRID_EPOCHS", "FINAL_EPOCHS"]
