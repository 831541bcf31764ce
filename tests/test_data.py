"""Windows, splits, scalers and the DataModule, checked against hand-built references."""
from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import pandas as pd
import pytest
import torch

from lstm_grad.data import DataError, GoldDataModule, GoldWindows, load_series, persistence

PRICES = [100.0, 102.0, 101.0, 105.0, 104.0, 108.0, 107.5, 110.0, 109.0, 112.0,
          111.0, 115.0, 114.0, 118.0, 117.0, 121.0, 120.0, 124.0, 123.0, 127.0]
WINDOW = 4
SPLIT = (0.5, 0.25, 0.25)  # 20 rows -> train rows 0..9, val 10..14, test 15..19


def write_plain(path, prices=PRICES):
    dates = pd.bdate_range("2024-01-01", periods=len(prices))
    lines = ["date,price"] + [f"{d:%Y-%m-%d},{p}" for d, p in zip(dates, prices)]
    path.write_text("\n".join(lines) + "\n")
    return path


def small_module(tmp_path, horizon=1, target_mode="level", prices=PRICES, **kw):
    dm = GoldDataModule(source=str(write_plain(tmp_path / "plain.csv", prices)), last_n_days=None, window=WINDOW,
                        horizon=horizon, batch_size=4, target_mode=target_mode, features=["price"], split=SPLIT, **kw)
    dm.setup("fit")
    return dm


def reference(horizon, target_mode, prices=PRICES):
    """Windows built row by row: the slow, obvious route to compare the strided views against."""
    p = np.array(prices)
    mean, std = p[:10].mean(), p[:10].std()
    bounds = {"train": (0, 10), "val": (10, 15), "test": (15, 20)}
    out = {name: ([], [], []) for name in bounds}
    for s in range(len(p) - WINDOW - horizon + 1):
        first, last = s + WINDOW, s + WINDOW + horizon - 1
        for name, (lo, hi) in bounds.items():
            if lo <= first and last < hi:
                xs, ys, anchors = out[name]
                xs.append([[(p[r] - mean) / std] for r in range(s, s + WINDOW)])
                anchor = p[s + WINDOW - 1]
                if target_mode == "level":
                    ys.append([p[s + WINDOW + h] for h in range(horizon)])
                else:
                    ys.append([np.log(p[s + WINDOW + h] / anchor) for h in range(horizon)])
                anchors.append(anchor)
    return out


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("target_mode", ["level", "log_return"])
def test_windows_and_targets_equal_hand_built_reference(tmp_path, horizon, target_mode):
    dm = small_module(tmp_path, horizon, target_mode)
    ref = reference(horizon, target_mode)
    expected_sizes = {1: {"train": 6, "val": 5, "test": 5}, 3: {"train": 4, "val": 3, "test": 3}}[horizon]
    assert dm.split_sizes == expected_sizes
    for name, (xs, ys, anchors) in ref.items():
        ds = dm.datasets[name]
        x, y, anchor, index = ds.__getitems__(list(range(len(ds))))
        assert x.shape == (len(xs), WINDOW, 1) and y.shape == (len(ys), horizon)
        assert index.tolist() == list(range(len(ds)))
        torch.testing.assert_close(x, torch.tensor(xs, dtype=torch.float32))
        raw_y = np.array(ys)
        if target_mode == "level":
            mean, std = np.mean(PRICES[:10]), np.std(PRICES[:10])
        else:
            train_y = np.array(ref["train"][1])
            mean, std = train_y.mean(), train_y.std()
        torch.testing.assert_close(y, torch.tensor((raw_y - mean) / std, dtype=torch.float32))
        assert anchor.dtype == torch.float64 and anchor.tolist() == anchors  # raw prices, exactly
        actual_prices = raw_y if target_mode == "level" else np.array(anchors)[:, None] * np.exp(raw_y)
        raw_anchor, raw_actual = dm.window_prices(name, index)
        assert raw_anchor.tolist() == anchors
        np.testing.assert_allclose(raw_actual.numpy(), actual_prices, rtol=1e-15)
        rebuilt = dm.inverse_transform(y, anchor)  # float64 from float32 scaled targets
        assert rebuilt.dtype == torch.float64
        np.testing.assert_allclose(rebuilt.numpy(), actual_prices, rtol=1e-6)


def test_first_windows_exact_numbers(tmp_path):
    dm = small_module(tmp_path, horizon=3, target_mode="log_return")
    ds = dm.datasets["train"]
    assert ds.anchor[0].item() == 105.0  # row 3 closes the first 4-day context
    actual = dm.inverse_transform(ds.targets[:1], ds.anchor[:1])  # rebuilt from float32 scaled targets
    torch.testing.assert_close(actual, torch.tensor([[104.0, 108.0, 107.5]], dtype=torch.float64))
    assert ds.actual[0].tolist() == [104.0, 108.0, 107.5]  # the raw prices, exactly
    assert ds.target_dates[0] == pd.Timestamp("2024-01-05")
    assert persistence(ds.anchor[:2], 3).tolist() == [[105.0] * 3, [104.0] * 3]
    assert dm.persistence(ds.anchor[:1]).tolist() == [[105.0] * 3]


@pytest.mark.parametrize("target_mode", ["level", "log_return"])
def test_scaler_fitted_on_train_span_only(tmp_path, target_mode):
    dm = small_module(tmp_path, target_mode=target_mode)
    state = dm.state_dict()
    assert state["feature_mean"] == pytest.approx([np.mean(PRICES[:10])])
    assert state["feature_std"] == pytest.approx([np.std(PRICES[:10])])
    changed = PRICES[:15] + [p * 3 for p in PRICES[15:]]
    other = small_module(tmp_path, target_mode=target_mode, prices=changed)
    assert other.state_dict() == state


@pytest.mark.parametrize("horizon", [1, 3])
def test_no_window_crosses_forward(tmp_path, horizon):
    dm = small_module(tmp_path, horizon)
    bounds = {"train": (0, 10), "val": (10, 15), "test": (15, 20)}
    for name, ds in dm.datasets.items():
        lo, hi = bounds[name]
        first_target = ds.start + WINDOW
        assert bool((first_target >= lo).all()) and bool((first_target + horizon - 1 < hi).all())
    last_train = dm.split_dates["train"][1] + pd.tseries.offsets.BDay(horizon - 1)
    assert last_train < dm.split_dates["val"][0] <= dm.split_dates["val"][1] < dm.split_dates["test"][0]


def test_getitems_equals_stacked_getitem_and_windows_are_views(tmp_path):
    ds = small_module(tmp_path, horizon=3).datasets["train"]
    picks = [3, 0, 2]
    x, y, anchor, index = ds.__getitems__(picks)
    items = [ds[i] for i in picks]
    for got, k in ((x, 0), (y, 1), (anchor, 2), (index, 3)):
        torch.testing.assert_close(got, torch.stack([item[k] for item in items]))
    assert ds.windows.untyped_storage().data_ptr() == ds.features.untyped_storage().data_ptr()
    assert ds[1][0].untyped_storage().data_ptr() == ds.features.untyped_storage().data_ptr()
    batch = next(iter(small_module(tmp_path).val_dataloader()))
    assert [t.shape for t in batch] == [(4, WINDOW, 1), (4, 1), (4,), (4,)]


def test_goldwindows_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="targets"):
        GoldWindows(torch.zeros(10, 2), torch.zeros(3, 1), torch.zeros(2), torch.zeros(3), 4)


def test_state_dict_round_trip_restores_scaler(tmp_path):
    dm = small_module(tmp_path, horizon=3, target_mode="log_return")
    path = tmp_path / "state.pt"
    torch.save(dm.state_dict(), path)
    state = torch.load(path, weights_only=True)
    changed = [p * 2 for p in PRICES]
    before = small_module(tmp_path, horizon=3, target_mode="log_return", prices=changed)
    assert before.state_dict() != state
    before.load_state_dict(state)  # after setup, as Lightning does: data is rescaled
    assert before.state_dict() == state
    expected = (torch.tensor(changed) - state["feature_mean"][0]) / state["feature_std"][0]
    torch.testing.assert_close(before.datasets["train"].features, expected.unsqueeze(-1))
    fresh = GoldDataModule(source=str(tmp_path / "plain.csv"), last_n_days=None, window=WINDOW, horizon=3,
                           target_mode="log_return", features=["price"], split=SPLIT)
    fresh.load_state_dict(state)  # before setup: setup keeps the restored statistics
    fresh.setup("test")
    assert fresh.state_dict() == state
    wrong = GoldDataModule(source=str(tmp_path / "plain.csv"), window=WINDOW, horizon=1, target_mode="log_return")
    with pytest.raises(DataError, match="horizon"):
        wrong.load_state_dict(state)


class _TinyForecaster(L.LightningModule):
    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(1, horizon)

    def training_step(self, batch, batch_idx):
        x, y, *_ = batch
        return torch.nn.functional.mse_loss(self.head(x[:, -1]), y)

    test_step = training_step  # Lightning's hook, not a pytest test

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_checkpoint_restores_scaler_through_trainer(tmp_path):
    dm = small_module(tmp_path, horizon=1)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_TinyForecaster(1), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = dm.state_dict()
    write_plain(tmp_path / "plain.csv", [p + 50 for p in PRICES])  # new data, same scaler expected
    restored = GoldDataModule(source=str(tmp_path / "plain.csv"), last_n_days=None, window=WINDOW, horizon=1, target_mode="level",
                              batch_size=4, features=["price"], split=SPLIT)
    tester = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    tester.test(_TinyForecaster(1), datamodule=restored, ckpt_path=tmp_path / "last.ckpt", verbose=False)
    assert restored.state_dict() == state


def test_embedded_series_loads():
    frame = load_series()
    assert frame.shape == (9132, 2) and list(frame.columns) == ["gold", "silver"]
    assert frame.index.name == "date" and frame.index.is_monotonic_increasing
    assert frame.index[0] == pd.Timestamp("1977-12-30") and frame.index[-1] == pd.Timestamp("2012-12-31")
    assert not frame.isna().any().any() and (frame.dtypes == "float64").all()
    recent = load_series(last_n_days=1247)
    assert len(recent) == 1247 and recent.index[-1] == frame.index[-1]


def test_default_datamodule_on_embedded_data():
    dm = GoldDataModule(price_levels=True)
    assert dm.n_features == 5 and dm.horizon == 1
    dm.setup("fit")
    assert dm.feature_names == ["gold", "silver", "log_return:gold", "log_return:silver", "volatility:gold:20"]
    assert dm.target_name == "gold"
    assert dm.split_sizes == {"train": 813, "val": 125, "test": 249}  # 1247 rows: 873 / 125 / 249 by target
    x, y, anchor, index = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 60, 5) and y.shape == (32, 1) and anchor.shape == index.shape == (32,)
    assert x.dtype == y.dtype == torch.float32 and torch.isfinite(x).all()
    assert anchor.dtype == torch.float64 and index.dtype == torch.int64
    assert dm.split_dates["test"][1] == pd.Timestamp("2012-12-31")
    assert GoldDataModule(features=["gold", "log_return:gold"]).n_features == 2


def test_default_features_on_single_price_file(tmp_path):
    prices = [100 + i + (i % 3) * 0.5 for i in range(80)]
    dm = GoldDataModule(source=str(write_plain(tmp_path / "p.csv", prices)), last_n_days=None, window=5, price_levels=True)
    dm.setup("fit")
    assert dm.feature_names == ["price", "log_return:price", "volatility:price:5", "volatility:price:20",
                                "momentum:price:5"]
    assert dm.datasets["train"].features.shape == (60, 5)  # 20 warm-up rows dropped
