"""The one training engine: Min-SNR weights, gradient accumulation, EMA, checkpoints and exact resume."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from models.engine import TrainConfig, fit
from models.errors import ConfigError, DivergedError
from models.objective import heldout_loss, min_snr_weights, training_loss
from models.schedulers import training_scheduler
from tests.models_helpers import MICRO, RandomFaces, flat_params, micro_family

QUIET = TrainConfig(epochs=1, batch_size=8, lr=1e-3, progress=False, val_samples=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("T", [1000, 10_000])
def test_min_snr_weights_match_the_formula(prediction_type, T):
    sched = training_scheduler(T, prediction_type=prediction_type)
    t = torch.tensor([0, T // 10, T // 2, T - 1])
    ac = sched.alphas_cumprod[t].double()
    snr = ac / (1 - ac)
    gamma = 5.0
    if prediction_type == "epsilon":  # min(SNR, g)/SNR, written min(g/SNR, 1): at T = 10,000 SNR(T-1) is 0
        expected = torch.clamp(gamma / snr, max=1.0)
    else:
        expected = torch.minimum(snr, torch.tensor(gamma)) / (snr + 1)
    got = min_snr_weights(sched, t, gamma, prediction_type)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-7)
    # low noise (huge SNR) is down-weighted; where SNR < gamma the epsilon weight is exactly 1
    assert got[0] < 0.01
    if prediction_type == "epsilon":
        assert got[-1] == pytest.approx(1.0)


def test_min_snr_epsilon_weight_is_one_where_alpha_bar_underflows():
    """T = 10,000 with the study's betas: alpha_bar (so the SNR) is 0 in float32 near the end of the chain;
    min(SNR, g)/SNR -> 1 there, not NaN."""
    sched = training_scheduler(10_000)
    t = torch.tensor([9_990, 9_999])
    weights = min_snr_weights(sched, t, 5.0, "epsilon")
    assert torch.equal(weights, torch.ones(2))
    assert torch.isfinite(min_snr_weights(sched, t, 5.0, "v_prediction")).all()


def test_min_snr_weighting_changes_the_loss_by_those_weights():
    fam = micro_family()
    batch = next(iter(torch.utils.data.DataLoader(RandomFaces(8), batch_size=8)))
    with torch.no_grad():
        plain = training_loss(fam, batch, seed=0, first_index=0, p_uncond=0.0, min_snr_gamma=None)
        weighted = training_loss(fam, batch, seed=0, first_index=0, p_uncond=0.0, min_snr_gamma=5.0)
        again = training_loss(fam, batch, seed=0, first_index=0, p_uncond=0.0, min_snr_gamma=5.0)
    assert weighted == again and weighted < plain  # weights are <= 1 and some are far below


def _fit_params(seed_init: int = 0, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    fam = micro_family(seed_init)
    start = flat_params(fam.module)
    fit(fam, dataclasses.replace(QUIET, **overrides), RandomFaces(64))
    return start, flat_params(fam.module)


def test_grad_accumulation_4x8_equals_batch_32():
    start, full = _fit_params(batch_size=32, grad_accum=1, ema=False)
    _, accumulated = _fit_params(batch_size=8, grad_accum=4, ema=False)
    _, other = _fit_params(batch_size=16, grad_accum=1, ema=False)  # same data, different updates
    update = (full - start).norm()
    assert (accumulated - full).norm() < 1e-3 * update
    assert (other - full).norm() > 0.1 * update


def test_training_is_reproducible_and_seeded():
    _, a = _fit_params(ema=True)
    _, b = _fit_params(ema=True)
    _, c = _fit_params(ema=True, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resume_continues_exactly(tmp_path):
    cfg = dataclasses.replace(QUIET, epochs=3, val_samples=16)
    data, val = RandomFaces(48), RandomFaces(16, seed=1)
    fam = micro_family()
    straight = fit(fam, cfg, data, val_dataset=val)
    expected = flat_params(fam.module)

    first = micro_family()
    result = fit(first, cfg, data, checkpoint_dir=tmp_path, val_dataset=val, on_epoch=lambda r: r.epoch == 0)
    assert result.stopped_early and result.epochs_completed == 1
    assert latest_checkpoint(tmp_path).name == "epoch-0000"

    resumed_family = micro_family(seed=99)  # different init: everything must come from the checkpoint
    resumed = fit(resumed_family, cfg, data, checkpoint_dir=tmp_path, val_dataset=val)
    assert resumed.epochs_completed == 3 and resumed.step == straight.step
    torch.testing.assert_close(flat_params(resumed_family.module), expected, atol=1e-6, rtol=0)
    assert resumed.history[-1]["train_loss"] == pytest.approx(straight.history[-1]["train_loss"], abs=1e-6)
    assert resumed.history[-1]["val_loss"] == pytest.approx(straight.history[-1]["val_loss"], abs=1e-6)


def test_warmup_is_diffusers_500_steps_at_most_a_tenth_of_the_run():
    from models.engine import warmup_steps

    cosine = dataclasses.replace(QUIET, lr_scheduler="cosine")
    assert warmup_steps(cosine, 100_000) == 500 and warmup_steps(cosine, 300) == 30
    assert warmup_steps(dataclasses.replace(cosine, lr_warmup_steps=7), 300) == 7


def test_cosine_schedule_is_diffusers_and_resumes_exactly(tmp_path):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    cfg = dataclasses.replace(QUIET, epochs=3, lr_scheduler="cosine")  # 6 steps per epoch, 18 in all: warm-up 1
    data = RandomFaces(48)
    fam = micro_family()
    straight = fit(fam, cfg, data)
    expected = flat_params(fam.module)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, 1, 18)
    lrs = []
    for _ in range(18):
        optimizer.step()
        schedule.step()
        lrs.append(schedule.get_last_lr()[0])
    assert [h["lr"] for h in straight.history] == [lrs[5], lrs[11], lrs[17]]
    assert lrs[0] == cfg.lr and lrs[11] < lrs[5] < cfg.lr

    fit(micro_family(), cfg, data, checkpoint_dir=tmp_path, on_epoch=lambda r: r.epoch == 0)
    resumed_family = micro_family(seed=99)
    resumed = fit(resumed_family, cfg, data, checkpoint_dir=tmp_path)  # the schedule continues from the checkpoint
    assert [h["lr"] for h in resumed.history] == [lrs[11], lrs[17]]
    torch.testing.assert_close(flat_params(resumed_family.module), expected, atol=1e-6, rtol=0)


def test_checkpoint_contents_are_safe_formats(tmp_path):
    fam = micro_family()
    fit(fam, dataclasses.replace(QUIET, epochs=2), RandomFaces(32), checkpoint_dir=tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "epoch-0001" and not (tmp_path / "epoch-0000").exists()  # older ones pruned
    assert sorted(p.name for p in ckpt.iterdir()) == ["ema.safetensors", "optimizer.pt", "state.pt",
                                                       "trainable.safetensors"]
    weights = load_file(str(ckpt / "trainable.safetensors"))
    assert set(weights) == set(fam.trainable_parameters())
    loaded = load_checkpoint(ckpt)  # torch.load(weights_only=True) for the .pt files
    assert loaded["state"]["epoch"] == 2 and loaded["state"]["step"] == 8
    assert loaded["optimizer"]["state"]
    # resume=<a checkpoint root> or <one epoch's directory> (what Ray Tune hands back), writing elsewhere
    for source in (tmp_path, ckpt):
        more = fit(micro_family(seed=5), dataclasses.replace(QUIET, epochs=3), RandomFaces(32), resume=source,
                   checkpoint_dir=tmp_path / f"next-{source.name}")
        assert more.step == 12 and more.epochs_completed == 3
    with pytest.raises(ConfigError, match="cannot resume"):
        fit(micro_family(), QUIET, RandomFaces(32), resume=tmp_path / "nothing")


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path, 0, {"w": {"a": torch.ones(2)}}, {"state": {"epoch": 1}})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 1, {"w": {"a": torch.zeros(2)}}, {"state": Unpicklable()})
    assert latest_checkpoint(tmp_path) == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    assert torch.equal(load_checkpoint(good)["w"]["a"], torch.ones(2))


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    fit(micro_family(), QUIET, RandomFaces(16), checkpoint_dir=tmp_path)
    other = micro_family(config=dataclasses.replace(MICRO, block_out_channels=(16, 64)))
    with pytest.raises(ConfigError, match="other parameters"):
        fit(other, dataclasses.replace(QUIET, epochs=2), RandomFaces(16), checkpoint_dir=tmp_path)


def test_epoch_report_sampling_uses_ema_weights_then_restores():
    fam = micro_family()
    seen = {}

    def hook(report):
        training = flat_params(fam.module)
        with report.sampling() as pipe:
            seen["sampling"] = flat_params(pipe.unet)
            seen["eval"] = not pipe.unet.training
        seen["restored"] = torch.equal(flat_params(fam.module), training)
        seen["training"] = training
        assert set(report.metrics()) >= {"train_loss", "epoch_seconds", "images_per_second", "lr", "step"}

    result = fit(fam, dataclasses.replace(QUIET, epochs=1), RandomFaces(64), on_epoch=hook)
    assert seen["restored"] and seen["eval"]
    assert not torch.equal(seen["sampling"], seen["training"])  # EMA differs from the raw weights
    assert result.ema_applied and torch.equal(flat_params(fam.module), seen["sampling"])


def test_heldout_loss_is_fixed_and_independent_of_the_run_seed():
    fam = micro_family()
    batches = list(torch.utils.data.DataLoader(RandomFaces(12, seed=5), batch_size=5))
    a, b = heldout_loss(fam, batches), heldout_loss(fam, batches)
    assert a == b and a > 0
    fit(fam, QUIET, RandomFaces(32))
    assert heldout_loss(fam, batches) != a


def test_max_steps_per_epoch_caps_the_epoch():
    result = fit(micro_family(), dataclasses.replace(QUIET, epochs=2, max_steps_per_epoch=3), RandomFaces(64))
    assert result.step == 6 and [h["step"] for h in result.history] == [3.0, 6.0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(p_uncond=1.5), "p_uncond"),
        (dict(min_snr_gamma=-1.0), "min_snr_gamma"),
        (dict(batch_size=64), "fewer than batch_size"),
        (dict(mixed_precision="fp8"), "mixed_precision"),
        (dict(lr_scheduler="warmup"), "lr_scheduler"),
        (dict(lr_warmup_steps=-1), "lr_warmup_steps"),
    ],
)
def test_bad_settings_raise_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:  # at construction, or at fit for data-size checks
        fit(micro_family(), dataclasses.replace(QUIET, **overrides), RandomFaces(16))
    assert "\n" not in str(err.value)


class PoisonedFaces(RandomFaces):
    """RandomFaces whose images turn NaN from epoch `poison_epoch` on (fit calls set_epoch before each epoch)."""

    def __init__(self, n: int, poison_epoch: int):
        super().__init__(n)
        self.poison_epoch, self.epoch = poison_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if self.epoch >= self.poison_epoch:
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item


def test_a_diverged_run_stops_with_one_line_and_no_checkpoint_for_that_epoch(tmp_path):
    seen = []
    cfg = dataclasses.replace(QUIET, epochs=3)  # 32 items / batch 8: 4 steps per epoch
    with pytest.raises(DivergedError) as err:
        fit(micro_family(), cfg, PoisonedFaces(32, poison_epoch=1), checkpoint_dir=tmp_path,
            on_epoch=lambda r: seen.append(r.epoch))
    message = str(err.value)
    assert "\n" not in message and "nan" in message and "epoch 2" in message and "step 5" in message
    assert "lower the learning rate" in message and "grad_clip" in message
    assert (err.value.epoch, err.value.step) == (1, 5)
    assert isinstance(err.value, ConfigError)  # reported like every other settings error
    assert seen == [0]  # on_epoch ran for the good epoch only
    assert latest_checkpoint(tmp_path).name == "epoch-0000"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0000", "latest"]
    again = pickle.loads(pickle.dumps(err.value))  # Ray ships a failed trial's exception to the driver
    assert type(again) is DivergedError and str(again) == message


def test_an_absurd_learning_rate_diverges():
    cfg = dataclasses.replace(QUIET, lr=1e6, grad_clip=None, ema=False)
    with pytest.raises(DivergedError, match=r"epoch 1 by optimizer step \d+; lower the learning rate \(lr=1e\+06\) "
                                            r"or enable gradient clipping"):
        fit(micro_family(), cfg, RandomFaces(32))


def test_step_losses_are_window_means_over_loss_every_steps():
    reports = []
    cfg = dataclasses.replace(QUIET, epochs=2, loss_every=3)  # 64 items / batch 8: 8 steps per epoch
    result = fit(micro_family(), cfg, RandomFaces(64), on_epoch=reports.append)
    # windows end at multiples of 3 over the run and at each epoch's end
    assert [s for s, _ in reports[0].step_losses] == [3, 6, 8]
    assert [s for s, _ in reports[1].step_losses] == [9, 12, 15, 16]
    assert result.step_losses == reports[0].step_losses + reports[1].step_losses
    for report, first in zip(reports, (0, 8)):  # the windows' step-weighted mean is the epoch's loss
        ends = [s for s, _ in report.step_losses]
        sizes = [b - a for a, b in zip([first, *ends[:-1]], ends)]
        mean = sum(n * v for n, (_, v) in zip(sizes, report.step_losses)) / sum(sizes)
        assert mean == pytest.approx(report.train_loss, rel=1e-5)
    assert all(isinstance(v, float) and v > 0 for _, v in result.step_losses)
    off = fit(micro_family(), dataclasses.replace(QUIET, loss_every=0, max_steps_per_epoch=2), RandomFaces(32))
    assert off.step_losses == []
    with pytest.raises(ConfigError, match="loss_every"):
        dataclasses.replace(QUIET, loss_every=-1)
