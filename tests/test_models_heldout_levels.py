"""The held-out loss asks every T at the same noise levels (what makes val_loss rank T = 1e3 vs 1e4 fairly)."""

from __future__ import annotations

import torch

from models.objective import _matched_timesteps
from models.schedulers import training_scheduler


def _log_alpha_bar(s):
    return torch.cumsum(torch.log1p(-s.betas.double()), 0)


def test_t1000_is_unchanged_and_t10000_is_asked_at_the_same_alpha_bar():
    ref = training_scheduler(1000)
    assert torch.equal(_matched_timesteps(ref, False), torch.arange(1000))
    for rescale in (False, True):
        long = training_scheduler(10000, beta_rescale=rescale)
        t = _matched_timesteps(long, rescale)
        mine, target = _log_alpha_bar(long)[t], _log_alpha_bar(ref)
        # nearest level on a 10x finer chain: within one step's log alpha_bar of the reference level (the
        # rescaled chain ends at log alpha_bar -10.06 instead of -10.12: rescaling keeps the sum only roughly)
        step = (-torch.log1p(-long.betas.double()))[t]
        assert torch.all((mine - target).abs() <= torch.clamp(step, min=0.07 if rescale else 0.0) + 1e-9)
    # the study's unscaled T = 1e4 chain is pure noise (alpha_bar < 1e-4) past t ~ 3,100: never asked there
    assert _matched_timesteps(training_scheduler(10000), False).max() < 3200
