"""Training benchmark: a wgpu-ensemble study against scikit-learn's MLPClassifier.

The same 12 configurations (hidden [32], [64], [64, 32] x relu, tanh x adam, sgd;
batch 64, learning rate 0.005, SGD momentum 0.9 without Nesterov, no weight decay, all
1437 training digits, every epoch run) are trained by `examples/train_bench.rs` (one
study, its trials one per device slot) and by scikit-learn one after the other, in
rounds that alternate between the two. Reported: each side's wall time for all 12, the
samples/s per trial, and each configuration's test accuracy on the 360 test digits.

    cargo build --release --example train_bench
    python3 benches/train_sklearn.py [--rounds 2] [--epochs 30] [--devices cpu]
"""
import argparse
import json
import os
import subprocess
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "examples", "data", "digits")
ACT = {"relu": "relu", "tanh": "tanh"}


def configs():
    for hidden in ([32], [64], [64, 32]):
        for activation in ("relu", "tanh"):
            for optimizer in ("adam", "sgd"):
                yield hidden, activation, optimizer


def sklearn_round(epochs):
    x = np.load(os.path.join(DIGITS, "x_train.npy"))
    y = np.load(os.path.join(DIGITS, "y_train.npy"))
    xt = np.load(os.path.join(DIGITS, "x_test.npy"))
    yt = np.load(os.path.join(DIGITS, "y_test.npy"))
    results = []
    started = time.perf_counter()
    for seed, (hidden, activation, optimizer) in enumerate(configs()):
        t0 = time.perf_counter()
        clf = MLPClassifier(
            hidden_layer_sizes=tuple(hidden), activation=ACT[activation], solver=optimizer,
            alpha=0.0, batch_size=64, learning_rate_init=0.005, max_iter=epochs,
            shuffle=True, random_state=seed, tol=0.0, n_iter_no_change=epochs + 1,
            momentum=0.9, nesterovs_momentum=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y)
        seconds = time.perf_counter() - t0
        results.append({
            "hidden": hidden, "activation": activation, "optimizer": optimizer,
            "seconds": seconds, "samples_per_s": len(x) * clf.n_iter_ / seconds,
            "test_accuracy": float(clf.score(xt, yt)), "epochs": clf.n_iter_,
        })
    return {"wall_s": time.perf_counter() - started, "trials": results}


def ours(epochs, devices):
    binary = os.path.join(ROOT, "target", "release", "examples", "train_bench")
    run = subprocess.run([binary, "--epochs", str(epochs), "--devices", devices],
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def key(t):
    return (tuple(t["hidden"]), t["activation"], t["optimizer"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--devices", default="cpu")
    args = parser.parse_args()
    for r in range(args.rounds):
        a = ours(args.epochs, args.devices)
        b = sklearn_round(args.epochs)
        print(f"round {r + 1}: wgpu-ensemble study ({args.devices}) {a['wall_s']:.2f} s, "
              f"scikit-learn sequential {b['wall_s']:.2f} s")
        sk = {key(t): t for t in b["trials"]}
        print("| config | ours samples/s | sklearn samples/s | ours test acc | sklearn test acc |")
        print("| --- | --- | --- | --- | --- |")
        for t in a["trials"]:
            s = sk[key(t)]
            print(f"| {t['hidden']} {t['activation']} {t['optimizer']} | {t['samples_per_s']:.0f} | "
                  f"{s['samples_per_s']:.0f} | {t['test_accuracy']:.4f} | {s['test_accuracy']:.4f} |")
        best_ours = max(a["trials"], key=lambda t: t["test_accuracy"])
        best_sk = max(b["trials"], key=lambda t: t["test_accuracy"])
        print(f"best: ours {best_ours['test_accuracy']:.4f} ({key(best_ours)}), "
              f"sklearn {best_sk['test_accuracy']:.4f} ({key(best_sk)}); same config in sklearn: "
              f"{sk[key(best_ours)]['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
