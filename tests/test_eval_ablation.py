"""`python -m evaluation.bench.ablation`: trains and scores each variant for real (a tiny run on the test cache)."""

from __future__ import annotations

import re

import pytest

from evaluation.bench.ablation import main


def test_two_variants_are_trained_scored_and_compared(data, capsys):
    code = main(["--variant", "base", "--variant", "snr5", "min_snr_gamma=5", "--variant", "ddim", "sampler=ddim",
                 "steps=4", "--seeds", "0", "--epochs", "1", "--epoch-images", "64", "--samples", "8", "--data", data])
    out = capsys.readouterr().out
    assert code == 0
    runs = re.findall(r"^(\w+) seed 0: balanced acc (\d\.\d{3}) .*held-out loss (\d\.\d{4})", out, re.M)
    assert [name for name, _, _ in runs] == ["base", "snr5", "ddim"]
    # base and ddim train the same model with the same seed; only the sampler differs
    assert runs[0][2] == runs[2][2]
    summary = dict(re.findall(r"^(\w+): mean balanced acc (\d\.\d{3}) over 1 seed", out, re.M))
    assert summary == {name: acc for name, acc, _ in runs}
    delta = re.search(r"^snr5: .* ([+-]\d\.\d{3}) vs base$", out, re.M)
    assert delta and float(delta.group(1)) == pytest.approx(float(summary["snr5"]) - float(summary["base"]), abs=2e-3)


@pytest.mark.parametrize("variant, message", [
    (["x", "foo=1"], "no setting 'foo'"),
    (["x", "batch_size=0"], "batch_size must be >= 1"),
    (["x", "min_snr_gamma=abc"], "min_snr_gamma='abc' is not a valid value"),
    (["x", "sampler=euler"], "sampler must be one of"),
    (["x", "lr"], "'lr' is not key=value"),
])
def test_a_bad_variant_is_one_line_before_any_training(variant, message, capsys):
    assert main(["--variant", *variant]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
