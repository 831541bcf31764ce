"""Public path of the pure-torch network: ``from lstm_grad.model import ResidualLSTM`` (lives in
:mod:`lstm_grad.forecaster.model`)."""
from lstm_grad.forecaster.model import ResidualLSTM, init_recurrent_

__all__ = ["ResidualLSTM", "init_recurrent_"]
