"""The models package's user-facing errors: one line naming the problem and the fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad model / training / sampling setting (unknown preset, impossible size, too little data...)."""


class DivergedError(ConfigError):
    """Training diverged: the training loss became NaN or infinite.

    A ConfigError because the cause and the fix are settings (learning rate, gradient clipping,
    precision), so every caller that already reports ConfigError as a one-line "change this setting"
    error (e.g. `python -m models.train`) reports this one too; callers that want to tell a diverged
    trial apart catch DivergedError first. `epoch` (0-based), `step` (optimizer steps so far) and
    `loss` say where it was detected.
    """

    def __init__(self, epoch: int, step: int, loss: float, lr: float, grad_clip: float | None):
        self.epoch, self.step, self.loss, self.lr, self.grad_clip = epoch, step, loss, lr, grad_clip
        clip = "enable gradient clipping (grad_clip, e.g. 1.0)" if grad_clip is None else (
            f"clip gradients harder (grad_clip={grad_clip:g})")
        super().__init__(
            f"training diverged: the training loss became {loss} in epoch {epoch + 1} by optimizer step {step}; "
            f"lower the learning rate (lr={lr:g}) or {clip}"
        )

    def __reduce__(self):  # pickles (Ray sends a failed trial's exception to the driver) with its fields
        return type(self), (self.epoch, self.step, self.loss, self.lr, self.grad_clip)
