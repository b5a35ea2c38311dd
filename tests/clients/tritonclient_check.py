#!/usr/bin/env python3
"""Triton's own Python client (`tritonclient[http]`, unchanged) against `wgpu-ensemble serve`.

Makes a model repository from tests/fixtures/golden (model `mean`, version 1, members on
the CPU), starts the server on 127.0.0.1 with --port 0, reads the address it prints,
runs the checks, stops it with SIGTERM and expects exit status 0.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install "tritonclient[http]"
    cargo build
    /tmp/venv/bin/python tests/clients/tritonclient_check.py target/debug/wgpu-ensemble

Exits 0 when every check passes; prints the first failure otherwise.
"""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"


def repository(into: pathlib.Path) -> None:
    version = into / "mean" / "1"
    version.mkdir(parents=True)
    for weights in GOLDEN.glob("*.safetensors"):
        shutil.copy(weights, version / weights.name)
    manifest = (GOLDEN / "mean.toml").read_text()
    (version / "ensemble.toml").write_text(manifest.replace('device = "auto"', 'device = "cpu"'))


def start(binary: str, repo: pathlib.Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        # A header timeout of 1 s, so that the idle connections of the client's pool
        # are closed by the server while the checks pause (see `checks`).
        [binary, "serve", "--model-repository", str(repo), "--port", "0", "--poll-interval-ms", "200",
         "--header-timeout-s", "1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in server.stderr:
        match = re.search(r"listening on http://(\S+)", line)
        if match:
            return server, match.group(1)
    raise SystemExit(f"the server exited ({server.wait()}) without saying where it listens")


def close(what: str, got: np.ndarray, want: np.ndarray, abs_tol=1e-5, rel_tol=1e-4) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    diff = np.abs(got.astype(np.float64) - want)
    bad = diff > np.maximum(abs_tol, rel_tol * np.maximum(np.abs(got), np.abs(want)))
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: index {i}: got {got[i]}, expected {want[i]}")


def measures(members: np.ndarray) -> dict[str, np.ndarray]:
    """The uncertainty measures of equally weighted members ([members, rows, classes]),
    from their definitions: natural logarithms, values of 0 or below adding nothing to
    an entropy, a member voting for its first largest output."""
    def entropy(p: np.ndarray) -> np.ndarray:
        safe = np.where(p > 0, p, 1.0)
        return -np.sum(np.where(p > 0, p * np.log(safe), 0.0), axis=-1)

    mean = members.mean(axis=0)
    h = entropy(mean)
    expected = entropy(members).mean(axis=0)
    classes = members.shape[-1]
    votes = np.stack([np.bincount(row, minlength=classes) for row in members.argmax(axis=-1).T])
    return {
        "entropy": h,
        "expected_entropy": expected,
        "mutual_information": np.maximum(h - expected, 0.0),
        "disagreement": 1.0 - votes.max(axis=-1) / members.shape[0],
        "variance": ((members - mean) ** 2).mean(axis=0),
    }


def checks(url: str) -> None:
    client = httpclient.InferenceServerClient(url=url, network_timeout=30.0)
    assert client.is_server_live(), "live"
    assert client.is_server_ready(), "ready"
    assert client.is_model_ready("mean"), "model ready"
    assert client.is_model_ready("mean", "1"), "version ready"
    assert not client.is_model_ready("nope"), "unknown model ready"
    meta = client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"], meta
    model = client.get_model_metadata("mean")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 12]}], model
    assert model["outputs"][0]["name"] == "output", model
    names = [o["name"] for o in model["outputs"]]
    assert names == [
        "output", "members", "entropy", "expected_entropy", "mutual_information", "disagreement", "variance"
    ], model

    x = np.load(GOLDEN / "x.npy")
    x64 = np.load(GOLDEN / "x_f64.npy")
    want = np.load(GOLDEN / "expected_mean.npy")
    members = np.load(GOLDEN / "expected_members.npy")

    # The client's defaults: binary input, no outputs named (all come back binary).
    for data, datatype in [(x, "FP32"), (x64, "FP64")]:
        for binary in [True, False]:
            inp = httpclient.InferInput("input", list(data.shape), datatype)
            inp.set_data_from_numpy(data, binary_data=binary)
            result = client.infer("mean", [inp], request_id="r1")
            close(f"{datatype} binary={binary}", result.as_numpy("output"), want)
            assert result.get_response()["id"] == "r1"
            assert result.get_response()["model_version"] == "1"

    # Outputs named, one JSON and one binary; a version, a timeout and a quorum.
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outputs = [
        httpclient.InferRequestedOutput("output", binary_data=False),
        httpclient.InferRequestedOutput("members", binary_data=True),
    ]
    result = client.infer(
        "mean", [inp], model_version="1", outputs=outputs, timeout=60_000_000, parameters={"quorum": 5}
    )
    close("output (JSON)", result.as_numpy("output"), want)
    close("members (binary)", result.as_numpy("members"), members)

    # The uncertainty measures by name, binary and JSON, against their definitions
    # over the members' reference outputs.
    want_measures = measures(members)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=(i % 2 == 0))
        for i, name in enumerate(want_measures)
    ]
    result = client.infer("mean", [inp], outputs=outputs)
    assert result.as_numpy("output") is None, "output was not asked for"
    for name, want_measure in want_measures.items():
        close(f"{name} (tritonclient)", result.as_numpy(name), want_measure, abs_tol=2e-5)

    # A bad request is an InferenceServerException with the server's message, and the
    # server answers afterwards.
    bad = httpclient.InferInput("input", [2, 11], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 11), dtype=np.float32))
    try:
        client.infer("mean", [bad])
        raise AssertionError("a width of 11 was taken")
    except InferenceServerException as e:
        assert "12" in e.message(), e.message()
    try:
        client.infer("nope", [inp])
        raise AssertionError("an unknown model answered")
    except InferenceServerException as e:
        assert "nope" in e.message(), e.message()
    # Compressed requests are refused with a message saying so; compressed answers
    # asked for come back uncompressed (the client reads the missing Content-Encoding).
    try:
        client.infer("mean", [inp], request_compression_algorithm="gzip")
        raise AssertionError("a gzip body was taken")
    except InferenceServerException as e:
        assert "gzip" in e.message(), e.message()
    result = client.infer("mean", [inp], response_compression_algorithm="gzip")
    close("answer to Accept-Encoding: gzip", result.as_numpy("output"), want)
    close("after the errors", client.infer("mean", [inp]).as_numpy("output"), want)
    # The server closes a keep-alive connection idle past its header timeout; the
    # client's next requests open new ones, unchanged.
    time.sleep(2.5)
    assert client.is_server_live(), "live after the idle connections were closed"
    close("after an idle pause", client.infer("mean", [inp]).as_numpy("output"), want)
    client.close()


def main() -> int:
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "debug" / "wgpu-ensemble")
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp)
        repository(repo)
        server, url = start(binary, repo)
        try:
            checks(url)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                code = "killed after 30 s"
        assert code == 0, f"the server exited with {code} after SIGTERM"
    print("tritonclient check: ok (health, metadata, FP32/FP64 binary and JSON inputs, binary and JSON outputs, uncertainty measures, version, timeout, quorum, errors, compression, idle connections closed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
