"""Every threshold the doctor uses, stated once with where it comes from.

Findings of one severity are ranked by how far past their threshold they are, in decades
(log10 of value / threshold, or threshold / value for a floor), so every rule is on one scale.

Calibrated on the clinic (``python -m experiments.clinic``: planted pathologies and healthy controls,
``docs/clinic.md``) and on healthy runs: the default forecaster over 6 epochs had update ratios of
0.9e-3 .. 6e-3 per step, a reach of 16-21 of 60 days, a clip rate of 7 % and a largest total norm
3x its running mean (measured at commit 6509492, ``python -m lstm_grad.fit --trainer.max_epochs 6``).
"""

from __future__ import annotations

VANISH_ABS = 1e-5
VANISH_ABS_SOURCE = "the recipe's vanishing threshold (a layer norm under 1e-5)"

DEPTH_RATIO = 1e-2
DEPTH_RATIO_SOURCE = ("results/depth.md: plain default-init LSTM stacks fall to 8e-4 (depth 8) and 8e-8 (depth 16) "
                      "first/last; every stack that trained kept >= 0.04")

REACH_SHARE = 0.1
REACH_SHARE_SOURCE = ("results/depth.md: LSTM stacks at windows 60-240 kept a reach of >= 0.12 of the window; "
                      "below 0.1 the early part of the window gets almost no gradient")

SPIKE_SIGMAS = 6.0
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 5
SPIKE_FACTOR = 10.0  # and at least 10x the median of those steps (healthy peaks: 2.3-6.4x, SPIKE_SOURCE)
SPIKE_SD_FLOOR = 1e-2  # a flat stretch's sd counts as at least 1 % of its mean: a 0.1 % rise is no spike
SPIKE_SOURCE = ("a value above the mean + 6 sd and 10x the median of the previous 20 logged steps (healthy runs "
                "peaked at 2.3-6.4x: the default forecaster 3.6x, the clinic's cured runs up to 6.4x, docs/clinic.md)")

EXPLODE_ABS = 100.0
EXPLODE_ABS_SOURCE = "GradientMonitor's explode_threshold (total pre-clip norm above 100)"

CLIP_RATE = 0.9
CLIP_FACTOR = 5.0
CLIP_SOURCE = ("clipping changed >= 90 % of the logged steps and the median pre-clip norm is >= 5x the clip value: "
               "the clip value, not the gradient, sets the step size (healthy default: clip rate 7 %)")

UPDATE_HIGH = 3e-2
UPDATE_LOW = 3e-5
UPDATE_SOURCE = ("update-to-weight ratio around 1e-3 per step is the rule of thumb (Karpathy 2019; CS231n); "
                 "healthy default runs: 0.9e-3 .. 6e-3; above 3e-2 or below 3e-5 is 10-30x outside")

GATE_CLOSED = 0.5
GATE_SOURCE = ("more than half of a layer's (batch, time, unit) gate values below 0.05: a closed forget gate "
               "keeps no memory, a closed input gate writes nothing (Hochreiter & Schmidhuber 1997; Gers et al. 2000)")

NOT_LEARNABLE_REL_MAE = 0.98
NOT_LEARNABLE_BAND = 1.05  # above this the model is worse than persistence: undertrained, not "the data's limit"
NOT_LEARNABLE_BAND_SOURCE = ("best validation MAE more than 5 % above persistence's: the default forecaster's seeds "
                             "stayed within 1.00-1.02 on validation (docs/results.md), a 2-epoch run was at 2.5")
NOT_LEARNABLE_SOURCE = ("best validation MAE within 2 % of persistence's (rel MAE >= 0.98): no better than "
                        "'tomorrow = today'; daily gold is close to a random walk (docs/results.md)")
