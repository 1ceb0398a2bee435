"""Load check of the web app: N concurrent clients posting X-rays to `/api/predict` for a
bounded time against a local server (127.0.0.1 only), with and without grouping
concurrent requests into one device call.

    .venv/bin/python benchmarks/serve_load.py --clients 8 --seconds 20 --batch-sizes 1,8 \
        --json benchmarks/results/serve_load_cpu.json \
        --markdown benchmarks/results/serve_load_cpu.md

For each `--batch-sizes` entry the server (`qatacov_jax.webapp`, uvicorn, in this process)
is started on a free 127.0.0.1 port with `--batch-size` set to it: 1 = every request is its
own device call, >1 = `webapp.engine.BatchQueue` groups the requests that wait into one
call of that many rows. The clients run in a separate process (threads, stdlib HTTP only),
so their Python work does not share the server's interpreter lock. Reported per setting:
requests/s, p50/p99 latency, errors (expected: none), device calls and mean batch size.
The model is randomly initialised (`--arch`/`--encoder`/`--image-size`, default the
quickstart's U-Net DenseNet-121 at 64x64) unless `--run` names a trained run; timing does
not depend on the weights. `--engines jax,onnx` serves it both ways: `jax` the run on JAX
(`serve.py --checkpoint`), `onnx` the same model exported to ONNX and served on ONNX Runtime
(`serve.py --model`), each setting back to back under the same load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from qatacov_jax.runtime import xla_flags  # noqa: E402
from qatacov_jax.runtime.files import write_json, write_text  # noqa: E402

xla_flags.apply_defaults()  # before JAX starts its backend

import numpy as np  # noqa: E402

from benchmarks.export_speed import loaded_models  # noqa: E402
from benchmarks.serve_startup import free_port, multipart_png  # noqa: E402


def _clients(url: str, n: int, seconds: float, png: bytes, out: Any) -> None:
    """Runs in its own process: n threads posting until the deadline."""
    body, ctype = multipart_png(png)
    results: list[tuple[float, int]] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < deadline:
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": ctype}, method="POST"
            )
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    r.read()
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = -1
            with lock:
                results.append((time.perf_counter() - t0, code))

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"results": results, "elapsed": time.perf_counter() - t_start})


def make_engine(name: str, loaded: Any, export_dir: Path, batch_size: int, wait_ms: float) -> Any:
    """The server's models: `loaded` on JAX, or its ONNX export in `export_dir` (written on
    first use) on ONNX Runtime."""
    from qatacov_jax.webapp.engine import load_engine, load_export_engine

    if name == "jax":
        return load_engine("unused", loaded=loaded, batch_size=batch_size, wait_ms=wait_ms)
    if not (export_dir / "manifest.json").exists():
        from qatacov_jax.export import serving_model, write_artifact

        write_artifact(serving_model(loaded), export_dir, fmt="onnx")
    return load_export_engine(export_dir, batch_size=batch_size, wait_ms=wait_ms)


def measure(engine: Any, png: bytes, batch_size: int, args: argparse.Namespace) -> dict:
    """Serves `engine` (closed at the end) to the clients; the figures of one setting."""
    import uvicorn

    from qatacov_jax.webapp.app import Settings, create_app

    app = create_app(engine, Settings())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/api/predict"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    # Warm-up: a short burst (first requests, thread pools), not counted.
    p = ctx.Process(target=_clients, args=(url, args.clients, 2.0, png, q))
    p.start()
    q.get()
    p.join()
    calls0 = engine.infer.calls
    p = ctx.Process(target=_clients, args=(url, args.clients, args.seconds, png, q))
    p.start()
    got = q.get()
    p.join()
    calls = engine.infer.calls - calls0
    server.should_exit = True
    thread.join(10)
    engine.close()
    lat = np.asarray([t for t, c in got["results"] if c == 200]) * 1000.0
    n_ok = int(lat.size)
    errors = len(got["results"]) - n_ok
    return {
        "engine": engine.engine,
        "batch_size": batch_size,
        "requests": len(got["results"]),
        "errors": errors,
        "seconds": got["elapsed"],
        "requests_per_s": n_ok / got["elapsed"],
        "p50_ms": float(np.percentile(lat, 50)) if n_ok else None,
        "p99_ms": float(np.percentile(lat, 99)) if n_ok else None,
        "device_calls": calls,
        "mean_batch": len(got["results"]) / calls if calls else None,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Web app load check (`benchmarks/serve_load.py`)",
        "",
        f"{report['clients']} concurrent clients posting a {report['upload']} PNG X-ray to "
        f"`/api/predict` for {report['seconds']:g} s per setting, server and clients on "
        f"this machine ({report['device']}); model: {report['model']}.",
        "",
        "| engine | --batch-size | requests/s | p50 ms | p99 ms | errors | device calls "
        "| mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r.get('engine', 'jax')} | {r['batch_size']} | {r['requests_per_s']:.2f} | "
            f"{r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['errors']} | {r['device_calls']} | "
            f"{r['mean_batch']:.2f} |"
        )
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="trained run directory (default: random init)")
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="densenet121")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--upload-size", type=int, default=256, help="side of the posted X-ray")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--engines", default="jax,onnx", help="jax, onnx (its ONNX export)")
    ap.add_argument("--wait-ms", type=float, default=2.0)
    ap.add_argument("--note", default="")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    if bad := [e for e in engines if e not in ("jax", "onnx")]:
        ap.error(f"--engines: unknown {bad}; choose from jax, onnx")

    import io

    import jax
    from PIL import Image

    from qatacov_jax.data import synthetic

    ex = synthetic.generate(7, 0, args.upload_size, positive_fraction=1.0)
    buf = io.BytesIO()
    Image.fromarray(ex.image).save(buf, format="PNG")
    png = buf.getvalue()
    label = f"random-init {args.arch}_{args.encoder} {args.image_size}px"
    loaded = loaded_models(args, label)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in engines:
            for b in (int(x) for x in args.batch_sizes.split(",")):
                engine = make_engine(name, loaded, Path(tmp) / "onnx", b, args.wait_ms)
                r = measure(engine, png, b, args)
                print(
                    f"{name} batch {b}: {r['requests_per_s']:.2f} req/s, p50 "
                    f"{r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, errors {r['errors']}, "
                    f"mean batch {r['mean_batch']:.2f}",
                    flush=True,
                )
                results.append(r)
    report = {
        "clients": args.clients,
        "seconds": args.seconds,
        "upload": f"{args.upload_size}x{args.upload_size}",
        "model": str(loaded.runs["infection"]),
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "wait_ms": args.wait_ms,
        "results": results,
        "note": args.note,
    }
    if args.json:
        write_json(args.json, report)
    if args.markdown:
        write_text(args.markdown, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
