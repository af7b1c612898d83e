"""Estimator accuracy: how often the attribute estimator reads back the levels that were asked for.

One torchmetrics confusion matrix per attribute (rows: requested level, columns: estimated level).
From it: `est_acc_<attribute>` (plain accuracy), `est_acc` (their mean, the study's number) and
`est_acc_balanced` (per attribute the mean recall over the levels that were requested, then the mean
over attributes). The balanced figure matters because level 0 dominates real data: the study's
estimator scored 70% on pure noise by always answering level 0. Levels that were never requested are
left out of the balanced mean (as sklearn's balanced_accuracy_score does); torchmetrics' macro
accuracy would count a level that was only predicted as a zero. The matrices themselves come back as the
table `est_confusion` (attribute -> 6x6 counts; `evaluation.confusion` draws them).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from data.schema import ATTRIBUTES, NUM_LEVELS
from evaluation.estimator import AttributeEstimator
from evaluation.metrics.base import EvalBatch, Outcome, State, restore, snapshot


def accuracies(confmat: torch.Tensor) -> tuple[float, float]:
    """(accuracy, balanced accuracy) from a confusion matrix with requested levels as rows."""
    confmat = confmat.double()
    support = confmat.sum(1)
    accuracy = float(confmat.diagonal().sum() / support.sum())
    present = support > 0
    balanced = float((confmat.diagonal()[present] / support[present]).mean())
    return accuracy, balanced


class EstimatorAccuracy:
    name = "est_acc"

    def __init__(self, estimator: AttributeEstimator):
        self.estimator = estimator
        device = next(estimator.parameters()).device
        self.confmats = nn.ModuleList(MulticlassConfusionMatrix(num_classes=NUM_LEVELS) for _ in ATTRIBUTES).to(device)

    def reset(self) -> None:
        for m in self.confmats:
            m.reset()

    def update(self, batch: EvalBatch) -> None:
        predicted = self.estimator.predict(batch.images)
        target = batch.levels.to(predicted.device)
        for i, m in enumerate(self.confmats):
            m.update(predicted[:, i], target[:, i])

    def state(self) -> State:
        return {k: v for attr, m in zip(ATTRIBUTES, self.confmats) for k, v in snapshot(m, f"{attr}.").items()}

    def compute(self, state: State) -> Outcome:
        for attr, m in zip(ATTRIBUTES, self.confmats):
            restore(m, state, f"{attr}.")
        n = int(self.confmats[0].confmat.sum())
        out = Outcome(counts={"est_acc_n": n})
        if n == 0:
            out.unavailable[self.name] = "no images were scored"
            return out
        plain, balanced = zip(*(accuracies(m.confmat) for m in self.confmats))
        out.values.update({f"est_acc_{attr}": a for attr, a in zip(ATTRIBUTES, plain)})
        out.values["est_acc"] = sum(plain) / len(plain)
        out.values["est_acc_balanced"] = sum(balanced) / len(balanced)
        out.tables["est_confusion"] = {attr: m.confmat.long().cpu().tolist() for attr, m in zip(ATTRIBUTES, self.confmats)}
        return out
