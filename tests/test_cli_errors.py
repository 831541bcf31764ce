"""Bad input at every door of both commands: stderr is one ``error:`` line, no traceback, exit != 0.

Every case runs in its own OS process with its own stderr file and exit status. Importing Lightning
costs ~5 s of CPU, so most cases are forked from one interpreter that imported the package once
(``run_forked``: ``os.fork`` + ``runpy.run_module(..., run_name="__main__")``, the same code path
as ``python -m``); one case per command also runs as a fresh ``python -m`` to cover start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENTRY_POINTS = {"fit": ["lstm_grad.fit"], "cli": ["lstm_grad.cli", "fit"]}
# case -> (extra arguments, exit status, text the error line must contain)
CASES = {
    "broken_csv": (["--data.source", "broken.csv"], 1, "broken.csv: column 'Price', line 3: cannot parse 'abc'"),
    "missing_csv": (["--data.source", "nowhere.csv"], 1, "nowhere.csv: file not found"),
    "bad_config_key": (["--config", "bad_key.yaml"], 2, "hidden_size"),
    "bad_flag": (["--model.hidden_sizez", "[4]"], 2, "unrecognized arguments: --model.hidden_sizez"),
    "bad_value": (["--model.dropout", "abc"], 2, 'Parser key "model.dropout": Expected a <class \'float\'>'),
    "bad_yaml": (["--config", "not_yaml.yaml"], 2, "Problems parsing config"),
    "bad_data_value": (["--data.window", "0"], 1, "data.window=0 must be an integer >= 1"),
    "bad_model_value": (["--model.loss", "l7"], 1, "loss='l7' is unknown"),
    "bad_trainer_value": (["--trainer.accelerator", "gpu"], 1, "gpu"),
    "missing_config": (["--config", "missing.yaml"], 2, "File does not exist"),
    "corrupt_checkpoint": (["--ckpt_path", "truncated.ckpt"], 1, "truncated.ckpt: cannot read the checkpoint"),
}
FRESH = {("fit", "broken_csv"), ("cli", "bad_config_key")}

FORK_SERVER = r'''
import json, os, runpy, sys, warnings
warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package")  # runpy, harmless
import lstm_grad.cli, lstm_grad.fit  # the expensive imports, once
jobs, results = json.loads(sys.argv[1]), {}
for name, (module, argv) in jobs.items():
    out, err = open(name + ".out", "w"), open(name + ".err", "w")
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        sys.argv = [module + ".py", *argv]
        code = 0
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            import traceback; traceback.print_exc(); code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results[name] = os.waitstatus_to_exitcode(status)
print(json.dumps(results))
'''


def write_inputs(folder: Path) -> None:
    (folder / "broken.csv").write_text("Date,Price\n2024-01-02,2063.7\n2024-01-03,abc\n2024-01-04,2070.1\n")
    (folder / "bad_key.yaml").write_text("model:\n  hidden_size: 3\n")
    (folder / "not_yaml.yaml").write_text("model: [unclosed\n  : :\n")
    (folder / "truncated.ckpt").write_bytes(b"PK\x03\x04" + bytes(100))  # a zip header, then nothing


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[tuple[str, str], subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("cli_errors")
    write_inputs(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(folder / "runs")]
    fresh = {key: subprocess.Popen([sys.executable, "-m", *ENTRY_POINTS[key[0]], *CASES[key[1]][0], *common],
                                   cwd=folder, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for key in FRESH}
    jobs = {f"{entry}-{case}": (ENTRY_POINTS[entry][0], [*ENTRY_POINTS[entry][1:], *extra, *common])
            for entry in ENTRY_POINTS for case, (extra, _, _) in CASES.items() if (entry, case) not in FRESH}
    server = subprocess.run([sys.executable, "-c", FORK_SERVER, json.dumps(jobs)], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=300)
    assert server.returncode == 0, server.stderr[-2000:]
    codes = json.loads(server.stdout.strip().splitlines()[-1])
    done = {}
    for name, code in codes.items():
        entry, case = name.split("-", 1)
        done[entry, case] = subprocess.CompletedProcess(name, code, (folder / f"{name}.out").read_text(),
                                                        (folder / f"{name}.err").read_text())
    for key, process in fresh.items():
        out, err = process.communicate(timeout=300)
        done[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_error_line(outcomes, entry, case):
    _, status, expected = CASES[case]
    result = outcomes[entry, case]
    stderr = result.stderr
    assert result.returncode == status, stderr[-1500:]
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-1500:]
    assert stderr.splitlines() == errors  # nothing else: no seed, hardware, tips or deprecation lines
    assert expected in errors[0]
    assert "usage:" not in stderr  # no 60-line usage block before it


def test_debug_keeps_the_traceback(tmp_path, monkeypatch, capsys):
    from lstm_grad.cli import run_guarded
    from lstm_grad.data import DataError
    from lstm_grad.fit import fit_main

    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path)
    assert run_guarded(fit_main, ["--data.source", "broken.csv"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: broken.csv: column 'Price', line 3")
    with pytest.raises(DataError, match="cannot parse 'abc'"):
        run_guarded(fit_main, ["--data.source", "broken.csv", "--debug"])
