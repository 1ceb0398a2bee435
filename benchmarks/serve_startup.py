"""Start-up time of `scripts/serve.py`: seconds from launching the command to its first
answer, on a first start (empty compilation cache), on a restart (the cache of the first
start) and with the cache off; and from the same run exported to ONNX
(`scripts/serve.py --model EXPORT_DIR`: ONNX Runtime, no JAX import, nothing to compile).

    .venv/bin/python benchmarks/serve_startup.py \
        --json benchmarks/results/serve_startup_cpu.json \
        --markdown benchmarks/results/serve_startup_cpu.md

Each start is a fresh `scripts/serve.py --checkpoint RUN --port P` process on 127.0.0.1;
the clock runs from its launch to the first 200 of `GET /api/config` (the server answers
only once its models are loaded and every batch bucket compiled) and then to the answer of
one `POST /api/predict`. RUN is `--run`, or a randomly initialised run of the quickstart's
model (U-Net DenseNet-121, 64x64: `configs/quickstart.py`) written to a temporary folder;
timing does not depend on the weights. The machine's load average is recorded before each
start: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from qatacov_jax.runtime.files import write_json, write_text  # noqa: E402

TARGETS_S = {"first start": 30.0, "restart": 20.0}
ONNX_START = "ONNX export (--model)"


def write_quickstart_run(path: Path) -> Path:
    """A run directory of the quickstart config with random weights (config.json,
    preprocessing.json, a 'best' checkpoint), as scripts/train.py lays one out."""
    from flax import nnx

    from configs import quickstart
    from qatacov_jax.data.preprocessing import Preprocessing
    from qatacov_jax.runtime import files
    from qatacov_jax.training import rundir
    from qatacov_jax.training.checkpoint import CheckpointStore
    from qatacov_jax.training.factory import build_model

    config = quickstart.get_config()
    path.mkdir(parents=True)
    rundir.check_or_write_config(path, config)
    prep = Preprocessing.from_mode(config.model.get("preprocessing", "imagenet"))
    files.write_json(path / rundir.PREPROCESSING_FILE, prep.to_dict())
    model = build_model(config, seed=0, load_weights=False)[0]
    store = CheckpointStore(path)
    store.save_best(1, nnx.state(model), {"pixel_f1": 0.0})
    store.wait()
    store.close()
    return path


def _export_onnx(run: Path, out: Path) -> Path:
    """`run` exported as `scripts/export.py --format onnx` does (in a child process, so this
    one stays free of JAX)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "export.py"), str(run)]
    cmd += ["--format", "onnx", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def free_port() -> int:
    """A free TCP port on loopback (the servers benchmarked here listen there only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png() -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def multipart_png(png: bytes) -> tuple[bytes, str]:
    """The body and Content-Type of an upload of `png` as the page sends it (field "file")."""
    boundary = "qatacovbenchmarkboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _predict(url: str, png: bytes) -> int:
    body, ctype = multipart_png(png)
    req = urllib.request.Request(url + "api/predict", data=body, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status


def start_once(model: list[str], cache: str, timeout_s: float) -> dict[str, Any]:
    """Launches the server on `model` (["--checkpoint", RUN] or ["--model", EXPORT_DIR]),
    waits for its first answers, stops it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), *model]
    cmd += ["--port", str(port), "--compilation-cache", cache]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    ready = None
    try:
        while time.perf_counter() - t0 < timeout_s and proc.poll() is None:
            try:
                with urllib.request.urlopen(url + "api/config", timeout=2) as r:
                    if r.status == 200:
                        ready = time.perf_counter() - t0
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        answered = None
        if ready is not None and _predict(url, _png()) == 200:
            answered = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if ready is None:
        tail = err.decode(errors="replace")[-2000:]
        raise RuntimeError(f"the server did not answer within {timeout_s:g} s:\n{tail}")
    return {"config_s": round(ready, 2), "predict_s": round(answered, 2), "load_avg": load}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# serve.py start-up (benchmarks/serve_startup.py)",
        "",
        f"Model: {report['model']}; {report['cpus']} CPU cores; "
        f"load average before each start in the table.",
        "",
        "| start | first `GET /api/config` (s) | first `POST /api/predict` answered (s) "
        "| target (s) | load avg |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        target = TARGETS_S.get(r["start"])
        lines.append(
            f"| {r['start']} | {r['config_s']:.1f} | {r['predict_s']:.1f} | "
            f"{'' if target is None else f'{target:g}'} | {r['load_avg']:.1f} |"
        )
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, help="run directory (default: random quickstart model)")
    p.add_argument("--restarts", type=int, default=2, help="restarts with the warm cache")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a start")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--note", default="", help="a sentence for the report (machine, load)")
    p.add_argument(
        "--no-onnx", dest="onnx", action="store_false", help="skip the ONNX export's starts"
    )
    args = p.parse_args(argv)
    if args.restarts < 1:
        p.error(f"--restarts must be a positive integer, got {args.restarts}")
    if args.timeout <= 0:
        p.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.run is not None and not (args.run / "config.json").is_file():
        p.error(f"--run {args.run} is not a run directory (no config.json)")
    with tempfile.TemporaryDirectory(prefix="serve_startup_") as tmp:
        run = args.run or write_quickstart_run(Path(tmp) / "run")
        cache = str(Path(tmp) / "jax_cache")
        model = ["--checkpoint", str(run)]
        results = [{"start": "first start", **start_once(model, cache, args.timeout)}]
        for _ in range(args.restarts):
            results.append({"start": "restart", **start_once(model, cache, args.timeout)})
        results.append({"start": "cache off", **start_once(model, "off", args.timeout)})
        cache_mb = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file()) / 2**20
        if args.onnx:
            exported = _export_onnx(run, Path(tmp) / "onnx")
            for _ in range(args.restarts):
                start = start_once(["--model", str(exported)], "off", args.timeout)
                results.append({"start": ONNX_START, **start})
    for r in results:
        print(
            f"{r['start']:12s} config {r['config_s']:6.1f} s  predict {r['predict_s']:6.1f} s"
            f"  (load {r['load_avg']:.1f})"
        )
    report = {
        "model": "quickstart U-Net DenseNet-121 64x64" if args.run is None else str(args.run),
        "cpus": os.cpu_count(),
        "results": results,
        "cache_mb": round(cache_mb, 1),
        "note": f"The compilation cache of one start holds {cache_mb:.1f} MB. Times are from "
        "launching `scripts/serve.py` (Python and JAX imports included; an ONNX export's "
        "server imports no JAX and compiles nothing). " + args.note,
    }
    if args.json:
        write_json(args.json, report)
    if args.markdown:
        write_text(args.markdown, markdown(report))


if __name__ == "__main__":
    main()
