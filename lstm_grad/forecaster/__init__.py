"""The forecaster: ``ResidualLSTM`` (pure torch), ``LSTMForecaster`` (a thin LightningModule), metrics in
price units (float64), baselines (persistence, drift, linear AR), the Diebold-Mariano test, and the
backtest's report writer."""
