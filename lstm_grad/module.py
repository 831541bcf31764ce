"""Public path of the LightningModule: ``from lstm_grad.module import LSTMForecaster`` (lives in
:mod:`lstm_grad.forecaster.module`)."""
from lstm_grad.forecaster.module import LSTMForecaster

__all__ = ["LSTMForecaster"]
