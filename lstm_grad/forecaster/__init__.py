"""The forecaster: ``ResidualLSTM`` (pure torch), ``LSTMForecaster`` (a thin LightningModule), metrics in
price units (float64: ``rel_mae``, Hyndman's ``mase`` ...), baselines (persistence, drift, linear AR), the
Diebold-Mariano test, the shrink toward persistence, conformal intervals, the evaluation of a test span,
and the backtest's report writer."""
