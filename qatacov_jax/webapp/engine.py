"""The server's models: loaded once, called through the jitted inference path of
`scripts/infer.py` (`inference.Predictor`), with concurrent requests grouped into one call.

Every web request is one X-ray. Called one by one, each would pay a full device call (and
`Predictor` pads every call to its fixed batch size, so that it compiles once). `BatchQueue`
therefore collects the images that arrive while the device is busy (or within
`wait_ms` of the first) and runs them as one batch; with `batch_size=1` every request is its
own call. `benchmarks/serve_load.py` measures both.

`load_export_engine` serves ONNX exports (`serve.py --model`) on ONNX Runtime through the
same queues; this module then never imports JAX (the run path imports it when it loads).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from qatacov_jax.export.onnx_runtime import OnnxPredictor
from qatacov_jax.inference.runs import LoadedModels, load_models

log = logging.getLogger(__name__)

WARMUP_IDLE_S = 1.0  # seconds without a request before the next warm-up compilation

PredictBatch = Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]]


class BatchQueue:
    """Runs `predict_batch` on a worker thread over groups of concurrently submitted images.

    JAX is called from that one thread only; request threads wait on a `Future`.
    """

    def __init__(
        self,
        predict_batch: PredictBatch,
        batch_size: int,
        wait_ms: float = 2.0,
        warmup: Sequence[Callable[[], object]] = (),
    ):
        """`warmup`: calls (compilations of larger batch shapes) the worker makes after
        `WARMUP_IDLE_S` without a request, one at a time, so that the server answers
        before all are done."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self._predict = predict_batch
        self.batch_size = batch_size
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self._q: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self.calls = 0  # device calls made (tests and the benchmark read it)
        self._warmup = list(warmup)
        self._thread = threading.Thread(target=self._run, name="predict-batches", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray) -> Future:
        """(H, W) float [0, 1] image -> Future of name -> (H, W) probabilities."""
        fut: Future = Future()
        self._q.put((image, fut))
        return fut

    def predict(self, image: np.ndarray, timeout: float | None = None) -> dict[str, np.ndarray]:
        return self.submit(image).result(timeout)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                # Warm-ups only after a quiet moment: a request arriving just as the server
                # opened would otherwise wait for a compilation it does not need.
                first = self._q.get(timeout=WARMUP_IDLE_S) if self._warmup else self._q.get()
            except queue.Empty:
                self._warm_one()
                continue
            if first is None:
                return
            group = [first]
            # Whatever queued up while the previous call ran joins at once; then wait a
            # moment for stragglers of the same burst, never longer than wait_s in total.
            stop = False
            while len(group) < self.batch_size:
                try:
                    nxt = self._q.get(timeout=self.wait_s) if self.wait_s else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            try:
                outs = self._predict([img for img, _ in group])
                self.calls += 1
                for (_, fut), out in zip(group, outs, strict=True):
                    fut.set_result(out)
            except Exception as e:  # noqa: BLE001 - hand the error to every waiting request
                log.exception("prediction of %d image(s) failed", len(group))
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(e)
            if stop:
                return

    def _warm_one(self) -> None:
        try:
            self._warmup.pop(0)()
        except Exception:  # noqa: BLE001 - the same shape compiles again on first use
            log.exception("warm-up compilation failed")


@dataclasses.dataclass
class Engine:
    """The loaded models and their batch queues.

    Attributes:
      runs: role ("infection", "lung", candidate names) -> run or export directory.
      infer: queue over the infection (+ lung) models: the demo's predictions.
      candidates: queue over every candidate model (annotation mode), or None.
      candidate_names: names of the candidate models, in `--candidates` order.
      roles: name -> the model's role inside its export directory (a candidate's is
        "infection"); names absent are their own role.
      engine: "jax" (trained runs) or "onnxruntime" (ONNX exports, `load_export_engine`).
    """

    runs: dict[str, Path]
    infer: BatchQueue
    candidates: BatchQueue | None
    candidate_names: tuple[str, ...]
    roles: dict[str, str] = dataclasses.field(default_factory=dict)
    engine: str = "jax"

    @property
    def with_lung(self) -> bool:
        return "lung" in self.runs

    def close(self) -> None:
        self.infer.close()
        if self.candidates is not None:
            self.candidates.close()


def bucket_sizes(max_rows: int, n_dev: int) -> list[int]:
    """Batch sizes a group is padded to: n_dev, 2 n_dev, 4 n_dev, ... and `max_rows`.

    One compilation each (at start-up); a group of 3 runs as 4 rows, not `max_rows`.
    """
    sizes, s = [], n_dev
    while s < max_rows:
        sizes.append(s)
        s *= 2
    return [*sizes, max_rows]


def _queue(loaded: LoadedModels, batch_size: int, wait_ms: float) -> BatchQueue:
    from qatacov_jax.inference.predictor import Predictor  # JAX: for trained runs only
    from qatacov_jax.runtime.sharding import make_mesh

    mesh = make_mesh()
    n_dev = mesh.devices.size
    rows = -(-batch_size // n_dev) * n_dev  # a multiple of the device count
    # `Predictor` pads a call to its batch size (n_dev here), or else to a multiple of the
    # device count; padding groups to bucket sizes keeps the compiled shapes to a few.
    predictor = Predictor(loaded.models, loaded.preprocessing, loaded.sizes, mesh, batch_size=n_dev)
    buckets = bucket_sizes(rows, n_dev)

    def predict_batch(imgs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        size = next(b for b in buckets if b >= len(imgs))
        # Padding rows repeat the first image (a plausible input); their outputs are dropped.
        return predictor.predict_batch(imgs + [imgs[0]] * (size - len(imgs)))[: len(imgs)]

    # The smallest bucket compiles now (the server answers once it is done); the larger
    # ones on the worker thread while it is idle: on a 2-core CPU each compilation of the
    # quickstart model takes seconds, and a first start compiled four before answering.
    # With the persistent compilation cache (runtime.compile_cache) a restart reads them.
    dummy = np.zeros((8, 8), np.float32)
    predict_batch([dummy] * buckets[0])
    warm = [functools.partial(predict_batch, [dummy] * b) for b in buckets[1:]]
    return BatchQueue(predict_batch, rows, wait_ms, warmup=warm)


def candidate_names(runs: Sequence[str | Path]) -> tuple[str, ...]:
    """Display names of candidate runs: the folder names, made unique with _2, _3..."""
    names: list[str] = []
    for r in runs:
        base = Path(r).absolute().name or "model"
        name, n = base, 2
        while name in names or name in ("consensus", "manual"):
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return tuple(names)


def load_engine(
    checkpoint: str | Path,
    *,
    lung_checkpoint: str | Path | None = None,
    candidates: Sequence[str | Path] = (),
    annotate: bool = False,
    batch_size: int = 8,
    wait_ms: float = 2.0,
    which: str = "best",
    loaded: LoadedModels | None = None,
) -> Engine:
    """Loads every model once (`inference.runs.load_models`) and compiles its predictor.

    In annotation mode without `candidates`, the infection model is the one candidate.
    `loaded` replaces loading the infection/lung runs (the benchmark's random-init model).
    """
    runs: dict[str, str | Path] = {"infection": checkpoint}
    if lung_checkpoint is not None:
        runs["lung"] = lung_checkpoint
    loaded = loaded or load_models(runs, which=which)
    infer = _queue(loaded, batch_size, wait_ms)
    cand_queue, names = None, ()
    all_runs = {k: Path(v) for k, v in loaded.runs.items()}
    if annotate:
        cand_runs = list(candidates) or [checkpoint]
        names = candidate_names(cand_runs)
        if not candidates:
            # The demo model doubles as the one candidate: no second copy, but its own
            # queue (a mapping with one name) so annotation never waits on the lung model.
            cl = LoadedModels(
                {names[0]: loaded.models["infection"]},
                {names[0]: loaded.configs["infection"]},
                {names[0]: loaded.preprocessing["infection"]},
                {names[0]: loaded.sizes["infection"]},
                {names[0]: loaded.runs["infection"]},
            )
        else:
            cl = load_models(dict(zip(names, cand_runs, strict=True)), which=which)
        cand_queue = _queue(cl, batch_size, wait_ms)
        all_runs.update({k: Path(v) for k, v in cl.runs.items()})
    return Engine(all_runs, infer, cand_queue, names)


def _renamed(predictor: OnnxPredictor, name: str) -> PredictBatch:
    """An export's infection predictions under the candidate name `name` (no lung map)."""

    def predict_batch(imgs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{name: p["infection"]} for p in predictor.predict_batch(imgs)]

    return predict_batch


def _joined(parts: Sequence[PredictBatch]) -> PredictBatch:
    """Several candidates' predictions merged per image (each export runs in turn)."""

    def predict_batch(imgs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = [{} for _ in imgs]
        for part in parts:
            for merged, pred in zip(out, part(imgs), strict=True):
                merged.update(pred)
        return out

    return predict_batch


def load_export_engine(
    model: str | Path,
    *,
    candidates: Sequence[str | Path] = (),
    annotate: bool = False,
    batch_size: int = 8,
    wait_ms: float = 2.0,
) -> Engine:
    """The server's models from ONNX exports (`scripts/export.py --format onnx`) on ONNX
    Runtime: `model` answers the demo (with its lung model when it was exported with one);
    in annotation mode each of `candidates` (exports too; default `model`) proposes masks.

    Nothing is compiled: a group runs as it is on a dynamic-batch export (a fixed-batch one
    is padded by `OnnxPredictor`).
    """
    main = OnnxPredictor.load(model, batch_size)
    dummy = np.zeros((8, 8), np.float32)
    main.predict_batch([dummy])  # ONNX Runtime's first call sets up its kernels
    runs = {k: Path(model) for k in main.names}
    infer = BatchQueue(main.predict_batch, batch_size, wait_ms)
    cand_queue, names, roles = None, (), {}
    if annotate:
        paths = list(candidates) or [model]
        names = candidate_names(paths)
        parts = [
            _renamed(main if Path(p) == Path(model) else OnnxPredictor.load(p, batch_size), n)
            for n, p in zip(names, paths, strict=True)
        ]
        cand_queue = BatchQueue(_joined(parts), batch_size, wait_ms)
        runs.update({n: Path(p) for n, p in zip(names, paths, strict=True)})
        roles = dict.fromkeys(names, "infection")
    return Engine(runs, infer, cand_queue, names, roles, engine="onnxruntime")
