"""The ``privfed`` command end to end on tiny configs, as a user would call it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CLASSIFIER

from privfed.cli import main

REPO = Path(__file__).resolve().parents[1]


def _privfed(*args, cwd):
    """The CLI of this checkout (not whichever privfed happens to be installed), run from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "privfed", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def _tiny_config(tmp_path, **privacy):
    raw = json.loads(json.dumps(TINY_CLASSIFIER))
    raw["model"]["regime"] = "lora"
    raw["privacy"] = privacy or {"mode": "target_epsilon", "epsilon": 3.0}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_writes_every_artefact_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    cfg = _tiny_config(tmp_path)
    out = tmp_path / "run"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    proc = _privfed("run", "--config", str(cfg), "--out", str(out), "--set", "training.rounds=2", "--no-progress",
                    "--report-to", "tensorboard,mlflow", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "## Summary" in proc.stdout and "ε spent" in proc.stdout
    for name in ("config.yaml", "metrics.csv", "results.json", "ledger.jsonl", "rounds.png"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["versions"]) == {"privfed", "torch", "opacus", "transformers", "peft"}
    assert len(res["rounds"]) == 2 and res["rounds"][0]["bytes_up"] > 0
    for key in ("round", "train_loss", "eval_loss", "eval_accuracy", "epsilon", "bytes_up", "bytes_down", "seconds"):
        assert key in res["rounds"][0]
    assert {"noise_multiplier", "max_grad_norm", "sample_rate", "steps", "epsilon"} <= set(res["privacy"]["clients"][0])
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["rounds"] == 2
    assert len((out / "ledger.jsonl").read_text().splitlines()) == 2 * 3

    _tracked_as_recorded(res, out / "tensorboard", tracking)

    # the end-to-end process above; the rest in this process (a process costs seconds of imports)
    capsys.readouterr()
    assert main(["table", str(out)]) == 0 and "tiny-bert" in capsys.readouterr().out

    before = (out / "results.json").read_bytes()
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a privfed run" in err and "--overwrite" in err
    assert (out / "results.json").read_bytes() == before  # the earlier run is untouched


def _tracked_as_recorded(results: dict, tensorboard: Path, tracking_uri: str) -> None:
    """--report-to: TensorBoard's event files and MLflow's store hold each round's numbers as results.json does,
    each client's ε, and (MLflow) the resolved config as parameters."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rounds = results["rounds"]
    events = EventAccumulator(str(tensorboard))
    events.Reload()
    for key in ("eval_accuracy", "train_loss", "epsilon", "bytes_up", "epsilon/client_0"):
        want = [r["client_epsilons"]["0"] if key == "epsilon/client_0" else r[key] for r in rounds]
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [r["round"] for r in rounds], key
        assert [e.value for e in logged] == pytest.approx(want, rel=1e-6), key
    client = MlflowClient(tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("privfed").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-bert"
    assert run.data.params["privacy.epsilon"] == "3.0" and run.data.params["training.rounds"] == "2"
    history = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert [m.step for m in history] == [r["round"] for r in rounds]
    assert [m.value for m in history] == pytest.approx([r["eval_accuracy"] for r in rounds])
    assert run.data.metrics["final/eval_accuracy"] == pytest.approx(results["final"]["eval_accuracy"])


def test_default_output_directory_never_replaces_an_earlier_run(tmp_path):
    from privfed.results import unused_run_dir

    base = tmp_path / "runs" / "demo"
    assert unused_run_dir(base) == base
    for taken in (base, base.with_name("demo-2")):
        taken.mkdir(parents=True)
        (taken / "config.yaml").write_text("name: demo\n")
    assert unused_run_dir(base) == base.with_name("demo-3")


def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path):
    for override, key in (("privacy.delta=2", "privacy.delta"), ("model.regime=nope", "model.regime"),
                          ("training.bogus=1", "training.bogus")):
        proc = _privfed("run", "--set", override, "--out", str(tmp_path / "bad"), cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and key in proc.stderr and "privfed: config error" in proc.stderr
        assert not (tmp_path / "bad").exists()
    missing = _privfed("run", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_sweep_with_secagg_and_distributed_dp_writes_tables_and_plot(tmp_path, capsys):
    cfg = _tiny_config(tmp_path)
    out = tmp_path / "sweep"
    proc = _privfed("sweep", "--config", str(cfg), "--epsilons", "2,inf", "--out", str(out), "--no-progress",
                    "--set", "training.rounds=1", "--set", "aggregation=secagg",
                    "--set", "privacy.distributed_noise=0.8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = (out / "table.md").read_text()
    assert "∞" in table or "inf" in table
    assert "user ε" in table  # user-level epsilon from distributed DP beside the record-level one
    assert "not tuned" in table  # the untuned sweep says its non-private line is no tuned baseline
    assert (out / "seeds.csv").read_text().count("\n") == 3
    png = (out / "privacy_utility.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    capsys.readouterr()
    assert main(["table", str(out), "--csv"]) == 0
    assert capsys.readouterr().out.count("tiny-bert-eps") == 2 * 2  # every run: Markdown and CSV


@pytest.mark.parametrize("args, flag", [
    (["--epsilons", "3,-1"], "--epsilons"), (["--epsilons", "8", "--tune", "training.nope=1,2"], "--tune"),
    (["--epsilons", "8", "--tune", "training.lr="], "--tune"), (["--epsilons", "8", "--seeds", "0"], "--seeds"),
    (["--epsilons", "8", "--validation-fraction", "0.2"], "--validation-fraction"),
    (["--epsilons", "8", "--tune", "training.lr=0.1,0.2", "--validation-fraction", "0.9",
      "--set", "data.max_examples=40", "--set", "partition.scheme=iid", "--set", "partition.num_clients=10"],
     "--validation-fraction"),
])
def test_bad_sweep_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, flag):
    out = tmp_path / "sweep"
    code = main(["sweep", "--config", str(_tiny_config(tmp_path)), *args, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and flag in err, err
    assert not out.exists()


def _run_in_process(capsys, out, *overrides):
    """``privfed run`` on the built-in demo config with ``overrides``, in this process: (exit status, stderr)."""
    from privfed.cli import main

    args = ["run", "--out", str(out), "--no-progress"]
    for item in ("data.max_examples=120", "data.eval_examples=16", *overrides):
        args += ["--set", item]
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def test_a_word_too_narrow_for_the_exact_sum_is_one_config_error_line(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = _run_in_process(capsys, out, "aggregation=secagg", "aggregation.word_bits=4")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("privfed: config error: aggregation.word_bits: 4 bits cannot hold the exact sum of")
    assert "even 2-bit values need" in err and not out.exists()


@pytest.mark.parametrize("overrides", [
    ("model.source=tiny_bert",),
    ("model.source=tiny_llama", "data.source=chatterbot", "partition.scheme=natural"),
])
def test_lora_layers_beyond_a_tiny_model_are_one_config_error_line(capsys, tmp_path, overrides):
    out = tmp_path / "out"
    code, err = _run_in_process(capsys, out, "model.regime=lora", "model.lora_top_layers=0",
                                "model.lora_layers=[2, 3, 4, 5]", *overrides)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("privfed: config error: model.lora_layers: asks for layers [2, 3, 4, 5]")
    assert "has 2 layers (0..1)" in err and "[] for all layers" in err
    assert not out.exists()


def test_unreachable_epsilon_is_one_config_error_line(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = _run_in_process(capsys, out, "model.source=tiny_bert", "model.regime=full", "privacy.epsilon=0.01")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("privfed: config error: privacy.epsilon: target 0.01 is below 0.103")
    assert "privacy.accountant=prv" in err and "privacy.mode=fixed_noise" in err
    assert not out.exists()


def test_flower_app_folder_embeds_the_config_and_certs_refuse_to_replace_a_ca(capsys, tmp_path):
    import tomllib

    from privfed.config import from_dict
    from privfed.engines.flower.wire import fingerprint

    config = _tiny_config(tmp_path)
    assert main(["flower", "app", "--config", str(config), "--set", "training.rounds=1", "--out",
                 str(tmp_path / "app")]) == 0
    app = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "privfed.engines.flower.apps:server_app",
                                 "clientapp": "privfed.engines.flower.apps:client_app"}
    embedded = from_dict(json.loads(app["config"]["privfed-config"]))
    assert embedded.training.rounds == 1 and fingerprint(embedded) in capsys.readouterr().out
    assert main(["flower", "certs", str(tmp_path / "tls")]) == 0
    assert (tmp_path / "tls" / "server.key").stat().st_mode & 0o077 == 0
    assert main(["flower", "certs", str(tmp_path / "tls")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_flower_refusals_are_one_line_exit_2(capsys, tmp_path):
    assert main(["flower", "simulate", "--set", "aggregation=paillier", "--work", str(tmp_path)]) == 2
    assert "which the simulation's virtual nodes lack" in capsys.readouterr().err
    assert main(["flower", "loopback", "--set", "partition.scheme=natural", "--set", "partition.num_clients=0",
                 "--set", "data.source=chatterbot", "--set", "model.source=tiny_llama", "--work", str(tmp_path)]) == 2
    assert "one SuperNode serves one client" in capsys.readouterr().err


def test_one_convention_for_every_command(tmp_path, capsys):
    """--version; --print-config prints the config as the command would run it (an audit's is the audited one),
    --help-config lists the keys, on every command that takes a config; a renamed key answers with its new name;
    a sweep never silently replaces a run of another config in its --out; diagnostics go to stderr."""
    from privfed.config import load_config
    from privfed.results import RunDirectory

    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("privfed ")
    tiny = str(_tiny_config(tmp_path))
    assert main(["run", "--config", tiny, "--set", "training.rounds=5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["training"]["rounds"] == 5 and printed["name"] == "tiny-bert"
    assert main(["audit", "--config", tiny, "--print-config", "-q"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "tiny-bert-audit"
    assert main(["sweep", "--config", tiny, "--print-config"]) == 0  # no --epsilons needed to print
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "tiny-bert"
    for command in (["sweep"], ["attack-grid"], ["audit"], ["flower", "app"]):
        assert main([*command, "--help-config"]) == 0
        assert "privacy.epsilon" in capsys.readouterr().out
    assert main(["run", "--config", tiny, "--set", "data.dataset=bbc_news", "--print-config"]) == 2
    assert capsys.readouterr().err == "privfed: config error: data.dataset: renamed: use data.source\n"
    out = tmp_path / "sweep"
    RunDirectory(out / "tiny-bert-eps3").start(load_config(tiny, ["training.rounds=7"]))  # another config's run
    assert main(["sweep", "--config", tiny, "--epsilons", "3", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "tiny-bert-eps3 hold(s) a run of another config: pass --overwrite" in err and err.count("\n") == 1
    assert not (out / "table.md").exists()
