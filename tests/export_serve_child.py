"""Child process of tests/test_serve_from_export.py: runs `scripts/serve.py ARGS...` (or
`scripts/infer.py`) in this process and reports which heavy modules it imported.

    python tests/export_serve_child.py serve PORT PNG -- --model EXPORT_DIR ...
    python tests/export_serve_child.py infer -- --model EXPORT_DIR XRAYS --out OUT

`serve`: the server runs on a thread; once it answers, one PNG is posted to /api/predict and
its JSON answer (images left out) printed. Both print a last line
`{"modules": [...heavy modules loaded...], "code": exit code, "seconds": to first answer}`.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's benchmarks/
from benchmarks.serve_startup import multipart_png  # noqa: E402 - light: no JAX

HEAVY = ("jax", "jaxlib", "flax", "tensorflow", "orbax")


def _heavy() -> list[str]:
    return sorted(m for m in HEAVY if m in sys.modules)


def _script(name: str, argv: list[str]) -> int:
    sys.argv = [str(ROOT / "scripts" / f"{name}.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _post(port: int, png: bytes) -> dict:
    body, content_type = multipart_png(png)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/predict",
        data=body,
        headers={"Content-Type": content_type},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        answer = json.loads(r.read())
    return {k: v for k, v in answer.items() if not str(v).startswith("data:")}


def _serve(port: int, png: Path, argv: list[str]) -> None:
    t0 = time.perf_counter()
    codes: list[int] = []
    threading.Thread(
        target=lambda: codes.append(_script("serve", [*argv, "--port", str(port)])), daemon=True
    ).start()
    deadline = t0 + 120
    while time.perf_counter() < deadline and not codes:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/config", timeout=2).read()
            break
        except OSError:
            time.sleep(0.1)
    seconds = time.perf_counter() - t0
    if codes:  # the server refused to start
        print(json.dumps({"modules": _heavy(), "code": codes[0], "seconds": seconds}))
        return
    print(json.dumps(_post(port, png.read_bytes())))
    print(json.dumps({"modules": _heavy(), "code": 0, "seconds": seconds}), flush=True)


def main() -> None:
    mode, rest = sys.argv[1], sys.argv[2:]
    split = rest.index("--")
    head, argv = rest[:split], rest[split + 1 :]
    if mode == "serve":
        _serve(int(head[0]), Path(head[1]), argv)
    else:
        t0 = time.perf_counter()
        code = _script("infer", argv)
        seconds = time.perf_counter() - t0
        print(json.dumps({"modules": _heavy(), "code": code, "seconds": seconds}), flush=True)
    os._exit(0)  # the server thread does not stop by itself


if __name__ == "__main__":
    main()
