"""The real ``tensorboard`` server serves the same ``grad_norm/lstm_0`` values as our event file.

HTTP API of the installed tensorboard (``tensorboard/plugins/scalar/scalars_plugin.py``):
``/data/plugin/scalars/tags`` -> ``{run: {tag: {...}}}`` and
``/data/plugin/scalars/scalars?run=RUN&tag=TAG`` -> ``[[wall_time, step, value], ...]``.

Nothing here depends on luck: the server takes a port from the OS itself (``--port 0``, then reads the
one it names on stderr; a port probed free and released could be taken before TensorBoard binds it), a
thread drains its output, its info file goes to this test's folder (not a shared ``/tmp``), requests
bypass any ``*_proxy`` setting, and the test waits until every point is served (``tags`` may list the
tag while TensorBoard is still reading the event file).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAG = "grad_norm/lstm_0"
SERVING = re.compile(r"TensorBoard \S+ at (http://\S+?)/? \(Press CTRL\+C to quit\)")  # program.py
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never through a proxy


def get_json(url: str):
    with DIRECT.open(url, timeout=5) as response:
        return json.loads(response.read())


def start_tensorboard(logdir: Path, folder: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start ``tensorboard --port 0`` on ``logdir``; return the process and its output lines so far (a
    daemon thread keeps appending them, so a full pipe never stalls the server)."""
    server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir),
                               "--port", "0", "--host", "127.0.0.1", "--load_fast", "false",
                               "--reload_interval", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "TMPDIR": str(folder)})  # its .tensorboard-info file
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
    return server, lines


@pytest.mark.slow
def test_tensorboard_http_api_serves_the_event_file_values(tmp_path, tiny_forecaster, quiet_trainer):
    data, model = tiny_forecaster(tmp_path)
    logger = TensorBoardLogger(tmp_path / "runs", name="tb", default_hp_metric=False)
    trainer = quiet_trainer(max_epochs=2, logger=logger, log_every_n_steps=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    logger.experiment.flush()
    run_dir = Path(logger.log_dir)
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    expected = [(e.step, e.value) for e in accumulator.Scalars(TAG)]
    assert len(expected) == trainer.global_step > 5

    server, lines = start_tensorboard(tmp_path / "runs", tmp_path)
    run = f"{run_dir.parent.name}/{run_dir.name}"  # tb/version_0, relative to --logdir
    query = urllib.parse.urlencode({"run": run, "tag": TAG})
    try:
        deadline = time.monotonic() + 90
        base = None
        while True:
            assert server.poll() is None, "".join(lines)[-2000:]
            base = base or next((m.group(1) for m in map(SERVING.search, list(lines)) if m), None)
            try:
                if base and TAG in get_json(f"{base}/data/plugin/scalars/tags").get(run, {}):
                    served = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
                    if len(served) >= len(expected):  # the whole file is read
                        break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, "tensorboard never served the run"
            time.sleep(0.5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert [(step, value) for _, step, value in served] == expected  # float32 values, bit for bit
    assert server.returncode is not None  # stopped
