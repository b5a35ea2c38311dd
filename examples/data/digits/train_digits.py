"""Train the digits ensemble of `examples/digits.rs` with scikit-learn and export it.

scikit-learn's digits data set (8x8 images, 1797 samples) is split into 1437 training
and 360 test samples (stratified, seed 0); pixels are scaled to [0, 1]. Both splits
are written as .npy (the training split for `wgpu-ensemble train`). Five
MLPClassifier members of different architectures and activations are trained and each
is written as safetensors in PyTorch's nn.Sequential layout (`0.weight` [out, in],
`0.bias`, `2.weight`, ... with the activations in the metadata), with a manifest and
the test split as .npy.

Rerun from the repository root (rewrites examples/data/digits/, the folder of this
script):

    pip install numpy safetensors scikit-learn
    python3 examples/data/digits/train_digits.py
"""
import os
import warnings

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

OUT = os.path.dirname(os.path.abspath(__file__))
ACT = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "identity"}
MEMBERS = [
    ("relu-64", (64,), "relu"),
    ("tanh-32x32", (32, 32), "tanh"),
    ("logistic-128", (128,), "logistic"),
    ("relu-48x24", (48, 24), "relu"),
    ("identity-32", (32,), "identity"),
]

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
os.makedirs(OUT, exist_ok=True)
np.save(os.path.join(OUT, "x_test.npy"), x_test)
np.save(os.path.join(OUT, "y_test.npy"), y_test.astype(np.int64))
# The training split, for `wgpu-ensemble train` (its tests, its benchmark).
np.save(os.path.join(OUT, "x_train.npy"), x_train)
np.save(os.path.join(OUT, "y_train.npy"), y_train.astype(np.int64))

manifest = [
    "# The digits ensemble, made by examples/data/digits/train_digits.py (scikit-learn MLPClassifier).",
    "# Test accuracy measured by scikit-learn itself, for comparison:",
]
members = []
probabilities = []
for seed, (name, hidden, activation) in enumerate(MEMBERS):
    clf = MLPClassifier(hidden_layer_sizes=hidden, activation=activation, max_iter=400, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    accuracy = clf.score(x_test, y_test)
    manifest.append(f"#   {name}: {accuracy:.4f}")
    probabilities.append(clf.predict_proba(x_test).astype(np.float32))
    # scikit-learn stores coefs_[i] as [in, out]; PyTorch's layout is [out, in].
    tensors = {}
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        tensors[f"{2 * i}.weight"] = np.ascontiguousarray(w.T.astype(np.float32))
        tensors[f"{2 * i}.bias"] = b.astype(np.float32)
    activations = [ACT[activation]] * len(hidden) + ["softmax"]
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"), metadata={"activations": ",".join(activations)})
    members.append(f'[[member]]\nname = "{name}"\nfile = "{name}.safetensors"\ndevice = "auto"')
    print(f"{name}: test accuracy {accuracy:.4f}")

# scikit-learn's own class probabilities on the test split, [members, 360, 10], for the
# crate's tests to compare with.
np.save(os.path.join(OUT, "sklearn_proba.npy"), np.stack(probabilities))
manifest += ["", "[aggregate]", 'kind = "mean"', ""] + ["\n\n".join(members), ""]
with open(os.path.join(OUT, "digits.toml"), "w") as f:
    f.write("\n".join(manifest))
