"""`scripts/serve.py --checkpoint RUN [--annotate IMAGES --annotations OUT]`: the web app
(`qatacov_jax.webapp`) on uvicorn."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from absl import flags

from qatacov_jax.cli.common import (
    UsageError,
    define_map_flags,
    define_which_flag,
    map_settings,
    parse_command,
    positive,
    run_main,
)
from qatacov_jax.runtime.locking import run_dir_lock

log = logging.getLogger(__name__)

PROG = "scripts/serve.py"
DOC = """The web app: upload a chest X-ray, see its infection map, COVID-19 decision and
severity; with --annotate, review candidate masks and save accepted ones as a dataset.

    python scripts/serve.py --checkpoint RUN [--lung-checkpoint LUNG_RUN] [--port 8000]
    python scripts/serve.py --checkpoint RUN --annotate XRAYS_DIR --annotations OUT_DIR \\
        [--candidates RUN_A --candidates RUN_B]

Then open http://127.0.0.1:8000/ (with --token T: http://HOST:PORT/?token=T)."""


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "checkpoint", None, "run directory of the infection model", flag_values=fv, required=True
    )
    flags.DEFINE_string(
        "lung-checkpoint", None, "run directory of a lung model: adds severity", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "candidates",
        [],
        "run directory of a model proposing masks in annotation mode (repeat the flag for "
        "several; default: --checkpoint)",
        flag_values=fv,
    )
    flags.DEFINE_string("annotate", None, "folder of X-rays to annotate", flag_values=fv)
    flags.DEFINE_string(
        "annotations", None, "folder for accepted masks (QaTa-COV19 layout)", flag_values=fv
    )
    flags.DEFINE_boolean(
        "blind",
        False,
        "annotation: show candidates as 'candidate A, B..' in a per-image random order",
        flag_values=fv,
    )
    flags.DEFINE_string("host", "127.0.0.1", "address to bind", flag_values=fv)
    flags.DEFINE_integer("port", 8000, "port to listen on", flag_values=fv)
    flags.DEFINE_float("max-upload-mb", 32.0, "largest accepted upload (MB)", flag_values=fv)
    flags.DEFINE_string(
        "token", None, "secret clients must send (required off 127.0.0.1)", flag_values=fv
    )
    define_map_flags(fv)
    flags.DEFINE_integer(
        "batch-size", 8, "most concurrent requests grouped into one device call", flag_values=fv
    )
    flags.DEFINE_float(
        "batch-wait-ms", 2.0, "how long a call waits for more requests to group", flag_values=fv
    )
    define_which_flag(fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; serves until interrupted (exit 0), or exit 2 for bad flags/runs."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
        if rest:
            raise UsageError(f"unexpected arguments {rest}; every option is a --flag")
        if (v("annotate") is None) != (v("annotations") is None):
            raise UsageError("--annotate IMAGES_DIR and --annotations OUT_DIR go together")
        if v("candidates") and v("annotate") is None:
            raise UsageError("--candidates only applies to annotation mode; add --annotate")
        if v("max-upload-mb") <= 0:
            raise UsageError(f"--max-upload-mb must be positive, got {v('max-upload-mb')}")
        if not 0 < v("port") < 65536:
            raise UsageError(f"--port must be in 1..65535, got {v('port')}")
        positive("batch-size", v("batch-size"))
        import uvicorn

        from qatacov_jax.webapp.annotation import AnnotationStore
        from qatacov_jax.webapp.app import Settings, check_host, create_app
        from qatacov_jax.webapp.engine import load_engine

        try:
            check_host(v("host"), v("token"))
        except ValueError as e:
            raise UsageError(str(e)) from None
        threshold, lung_threshold, display_floor = map_settings(fv)
        settings = Settings(
            threshold=threshold,
            lung_threshold=lung_threshold,
            display_floor=display_floor,
            max_upload_mb=v("max-upload-mb"),
            token=v("token"),
            blind=v("blind"),
        )
        # The store first: a wrong folder is refused before minutes of model loading.
        # One server writes an annotations folder (runtime.locking): annotators share the
        # server, and a second server on the same folder is refused naming the first.
        stack = contextlib.ExitStack()
        store = None
        if v("annotate") is not None:
            stack.enter_context(run_dir_lock(v("annotations"), purpose="annotation server"))
            store = AnnotationStore(v("annotate"), v("annotations"))
        engine = load_engine(
            v("checkpoint"),
            lung_checkpoint=v("lung-checkpoint"),
            candidates=v("candidates"),
            annotate=store is not None,
            batch_size=v("batch-size"),
            wait_ms=v("batch-wait-ms"),
            which=v("which"),
        )
        app = create_app(engine, settings, store)
        where = f"http://{v('host')}:{v('port')}/" + (f"?token={v('token')}" if v("token") else "")
        log.info("serving on %s", where)
        try:
            uvicorn.run(app, host=v("host"), port=v("port"), log_level="info")
        except KeyboardInterrupt:
            pass  # uvicorn re-raises Ctrl-C after its graceful shutdown: a normal stop
        finally:
            engine.close()
            stack.close()
        return 0

    return run_main(body)
