"""Spread a wgpu-ensemble study's trials with Optuna, through the one-trial mode.

Optuna chooses each trial's parameters (TPE by default); this script writes them as
params.json, runs `wgpu-ensemble train --trial params.json --study STUDY --out OUT`,
reads the record it prints and reports the trial's validation loss back. With a shared
storage (`--storage sqlite:///shared/optuna.db`, or a PostgreSQL / MySQL URL), the same
command on several machines works on one study: each process asks Optuna for the next
trial. The search space below mirrors a study.toml's [space]; edit both together.

    pip install optuna
    cargo build --release
    python3 examples/optuna_study.py --study study.toml --out runs/optuna --trials 20 \
        [--storage sqlite:///optuna.db] [--devices cpu] [--bin target/release/wgpu-ensemble]

Not run in CI. The CLI is the contract; the orchestrator is yours.
"""
import argparse
import json
import os
import subprocess
import tempfile

import optuna


def suggest(trial):
    """The parameters of one trial: the keys of study.toml's [space] that it searches."""
    return {
        "hidden": json.loads(trial.suggest_categorical("hidden", ["[32]", "[64]", "[64, 32]"])),
        "activation": trial.suggest_categorical("activation", ["relu", "tanh", "gelu"]),
        "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "weight_decay": trial.suggest_categorical("weight_decay", [0.0, 1e-4]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study.toml (its [data] is used)")
    parser.add_argument("--out", required=True, help="the output folder (records and weights)")
    parser.add_argument("--trials", type=int, default=20, help="trials this process runs")
    parser.add_argument("--storage", default=None, help="Optuna storage URL, shared between machines")
    parser.add_argument("--name", default="wgpu-ensemble", help="Optuna study name")
    parser.add_argument("--devices", default="auto", help="wgpu-ensemble --devices (the first is used)")
    parser.add_argument("--bin", default="wgpu-ensemble", help="the wgpu-ensemble command")
    args = parser.parse_args()

    study = optuna.create_study(
        study_name=args.name, storage=args.storage, direction="minimize", load_if_exists=True
    )

    def objective(trial):
        params = suggest(trial)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(params, f)
            path = f.name
        try:
            run = subprocess.run(
                [args.bin, "train", "--trial", path, "--study", args.study,
                 "--out", args.out, "--devices", args.devices],
                capture_output=True, text=True,
            )
        finally:
            os.unlink(path)
        if run.returncode != 0:
            raise RuntimeError(f"wgpu-ensemble train failed: {run.stderr.strip()}")
        record = json.loads(run.stdout.strip().splitlines()[-1])
        trial.set_user_attr("name", record["name"])
        trial.set_user_attr("device", record["device"])
        if record["status"] != "finished":
            raise optuna.TrialPruned(record.get("error") or "failed")
        return record["validation_loss"]

    study.optimize(objective, n_trials=args.trials)
    best = study.best_trial
    print(f"best: {best.user_attrs.get('name')} validation loss {best.value:.4f} {best.params}")


if __name__ == "__main__":
    main()
