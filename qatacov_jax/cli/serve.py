"""`scripts/serve.py --checkpoint RUN [--annotate IMAGES --annotations OUT]` or
`scripts/serve.py --review CANDIDATES --annotations OUT`: the web app (`qatacov_jax.webapp`)
on uvicorn. `--model EXPORT_DIR` serves an ONNX export on ONNX Runtime instead of a run, and
the server then never imports JAX (`webapp.engine.load_export_engine`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import flags

from qatacov_jax.cli.common import (
    UsageError,
    apply_input_flags,
    define_input_flags,
    define_map_flags,
    define_model_flag,
    define_which_flag,
    map_settings,
    model_source,
    parse_command,
    positive,
    run_main,
)
from qatacov_jax.runtime.locking import run_dir_lock

log = logging.getLogger(__name__)

PROG = "scripts/serve.py"
TOKEN_ENV = "QATACOV_TOKEN"
DOC = """The web app: upload a chest X-ray, see its infection map, COVID-19 decision and
severity; or review candidate masks and save accepted ones as a dataset
(docs/annotation.md).

    python scripts/serve.py --checkpoint RUN [--lung-checkpoint LUNG_RUN] [--port 8000]
    python scripts/serve.py --model EXPORT_DIR   # an ONNX export on ONNX Runtime, no JAX
    python scripts/serve.py --review WORKDIR/candidates --annotations OUT_DIR \\
        [--reference MASKS_DIR] [--blind] [--votes 2] [--order disagreement]
    python scripts/serve.py --checkpoint RUN --annotate XRAYS_DIR --annotations OUT_DIR \\
        [--candidates RUN_A --candidates RUN_B]
    python scripts/serve.py --annotate XRAYS_DIR --annotations OUT_DIR   # draw, no model

--review loads no model (the candidates are the masks scripts/annotation_stage.py wrote)
and starts in seconds. Then open http://127.0.0.1:8000/ (with --token T:
http://HOST:PORT/?token=T)."""

ORDERS = ("name", "random", "disagreement", "entropy")


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "checkpoint",
        None,
        "run directory of the infection model (not with --review)",
        flag_values=fv,
    )
    define_model_flag(fv)
    flags.DEFINE_string(
        "lung-checkpoint", None, "run directory of a lung model: adds severity", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "candidates",
        [],
        "run directory of a model proposing masks in annotation mode (repeat the flag for "
        "several; default: --checkpoint); ONNX export directories with --model",
        flag_values=fv,
    )
    flags.DEFINE_string("annotate", None, "folder of X-rays to annotate live", flag_values=fv)
    flags.DEFINE_string(
        "review",
        None,
        "candidate store to review (WORKDIR/candidates of scripts/annotation_stage.py); no "
        "model is loaded",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "annotations",
        None,
        "folder for decisions and accepted masks (dataset layout)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "reference",
        None,
        "folder of the doctors' own masks (annotation folder layout): each image's mask is "
        "offered as the candidate 'manual'",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "blind",
        False,
        "annotation: show candidates as 'candidate A, B..' in a per-image random order, "
        "with no name anywhere (the reference included)",
        flag_values=fv,
    )
    flags.DEFINE_integer("votes", 1, "annotators who must decide an image", flag_values=fv)
    flags.DEFINE_enum(
        "order",
        "name",
        list(ORDERS),
        "order images are offered in: disagreement (1 - mean pairwise Dice of the "
        "candidates) or entropy (of the probability maps) most informative first, random, "
        "name; disagreement and entropy need --review",
        flag_values=fv,
    )
    flags.DEFINE_integer("seed", 0, "seed of --order random", flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "address to bind", flag_values=fv)
    flags.DEFINE_integer("port", 8000, "port to listen on", flag_values=fv)
    flags.DEFINE_float("max-upload-mb", 32.0, "largest accepted upload (MB)", flag_values=fv)
    _define_exposure_flags(fv)
    define_map_flags(fv)
    flags.DEFINE_integer(
        "batch-size", 8, "most concurrent requests grouped into one device call", flag_values=fv
    )
    flags.DEFINE_float(
        "batch-wait-ms", 2.0, "how long a call waits for more requests to group", flag_values=fv
    )
    define_which_flag(fv)


def _define_exposure_flags(fv: flags.FlagValues) -> None:
    """The secret, the Host names answered, the timeouts for slow clients
    (`webapp.guards`), the pixel budget and the compilation cache."""
    flags.DEFINE_string(
        "token",
        None,
        "secret clients must send (required off 127.0.0.1); visible in `ps`: prefer "
        f"--token-file or ${TOKEN_ENV}",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "token-file", None, "file holding the secret (read once; never logged)", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "allowed-host",
        [],
        "a Host name clients may use besides the loopback names and --host (repeat; for a "
        "server on 0.0.0.0, the names and addresses clients type)",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "header-timeout", 10.0, "seconds a client has to send a request's head", flag_values=fv
    )
    flags.DEFINE_float(
        "body-timeout", 30.0, "seconds an upload may stall before a 408", flag_values=fv
    )
    flags.DEFINE_float(
        "keep-alive", 5.0, "seconds an idle keep-alive connection stays open", flag_values=fv
    )
    flags.DEFINE_integer(
        "max-connections", 64, "open connections served at once (503 beyond)", flag_values=fv
    )
    define_input_flags(fv)


def _check(v: Callable[[str], Any], rest: list[str]) -> None:
    """Refuses contradictory or out-of-range flags (UsageError)."""
    if rest:
        raise UsageError(f"unexpected arguments {rest}; every option is a --flag")
    if v("review") is not None:
        clash = [
            f for f in ("checkpoint", "model", "lung-checkpoint", "annotate") if v(f) is not None
        ]
        if clash or v("candidates"):
            raise UsageError(
                f"--review loads no model: drop {', '.join('--' + f for f in clash or ['candidates'])}"
            )
        if v("annotations") is None:
            raise UsageError("--review CANDIDATES needs --annotations OUT_DIR")
    else:
        if v("checkpoint") is None and v("model") is None and v("annotate") is None:
            raise UsageError(
                "--checkpoint RUN or --model EXPORT_DIR is required (or --review CANDIDATES, "
                "or --annotate XRAYS to draw masks without a model)"
            )
        if (v("annotate") is None) != (v("annotations") is None):
            raise UsageError("--annotate IMAGES_DIR and --annotations OUT_DIR go together")
        no_model = v("checkpoint") is None and v("model") is None
        if v("candidates") and (v("annotate") is None or no_model):
            raise UsageError("--candidates needs --annotate and --checkpoint (or --model)")
        if v("order") in ("disagreement", "entropy"):
            raise UsageError(f"--order {v('order')} needs a candidate store (--review)")
    annotating = v("annotations") is not None
    for flag, default in (("reference", None), ("votes", 1), ("order", "name"), ("blind", False)):
        if not annotating and v(flag) != default:
            raise UsageError(f"--{flag} only applies to annotation (--review or --annotate)")
    if v("votes") < 1:
        raise UsageError(f"--votes must be at least 1, got {v('votes')}")
    if v("max-upload-mb") <= 0:
        raise UsageError(f"--max-upload-mb must be positive, got {v('max-upload-mb')}")
    if not 0 < v("port") < 65536:
        raise UsageError(f"--port must be in 1..65535, got {v('port')}")
    positive("batch-size", v("batch-size"))


def _source(v: Callable[[str], Any], threshold: float) -> Any:
    """The annotation candidates' source (checked before any model loads or any folder is
    written: a wrong path is refused in seconds), or None on a demo-only server."""
    from qatacov_jax.export.manifest import read_manifest
    from qatacov_jax.export.onnx_runtime import check_onnx_export
    from qatacov_jax.webapp.annotation import LiveCandidates, StoredCandidates
    from qatacov_jax.webapp.engine import candidate_names

    if v("review") is not None:
        return StoredCandidates(v("review"))
    if v("annotate") is not None:
        model = v("checkpoint") or v("model")
        runs = v("candidates") or ([model] if model else [])
        # A server runs either trained runs on JAX or exports on ONNX Runtime, not both.
        for candidate in v("candidates"):
            if v("model") is not None:
                check_onnx_export(candidate)
            elif read_manifest(candidate) is not None:
                raise UsageError(
                    f"--candidates {candidate} is an exported model; serve exports with "
                    "--model EXPORT_DIR (all candidates exports), or give their runs"
                )
        return LiveCandidates(v("annotate"), candidate_names(runs), threshold)
    return None


def _token(v: Callable[[str], Any]) -> str | None:
    """The server's secret: --token-file, else $QATACOV_TOKEN, else --token (which every
    user of the machine can read in `ps`: warned about)."""
    if v("token") and v("token-file"):
        raise UsageError("give --token or --token-file, not both")
    if v("token-file"):
        try:
            secret = Path(v("token-file")).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--token-file {v('token-file')}: cannot read it ({e})") from None
        if not secret:
            raise UsageError(f"--token-file {v('token-file')} is empty")
        return secret
    if v("token"):
        log.warning(
            "--token shows the secret to every user of this machine (ps); prefer "
            "--token-file FILE or $%s",
            TOKEN_ENV,
        )
        return v("token")
    return os.environ.get(TOKEN_ENV, "").strip() or None


def _timeouts(v: Callable[[str], Any]) -> dict[str, float]:
    for name in ("header-timeout", "body-timeout", "keep-alive", "max-connections"):
        if not v(name) > 0:
            raise UsageError(f"--{name} must be positive, got {v(name)}")
    return {
        "header_timeout_s": v("header-timeout"),
        "keep_alive_s": v("keep-alive"),
        "max_connections": v("max-connections"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; serves until interrupted (exit 0), or exit 2 for bad flags/runs."""

    def body() -> int:
        fv, rest = parse_command(_define, argv, PROG, DOC)
        v = lambda name: fv[name].value  # noqa: E731 - dashed flag names need item access
        _check(v, rest)
        import uvicorn

        from qatacov_jax.webapp.app import Settings, check_host, create_app
        from qatacov_jax.webapp.engine import load_engine, load_export_engine
        from qatacov_jax.webapp.guards import allowed_hosts, uvicorn_config

        token, timeouts = _token(v), _timeouts(v)
        try:
            check_host(v("host"), token)
        except ValueError as e:
            raise UsageError(str(e)) from None
        # The models' source, checked before anything loads: a wrong folder costs seconds.
        models = model_source(fv) if v("checkpoint") or v("model") else None
        exported = models is not None and models.engine != "jax"
        # Pixel budget of uploads; the compilation cache (a run's) before loading.
        apply_input_flags(fv, compiles=not exported)
        threshold, lung_threshold, display_floor = map_settings(fv, models)
        settings = Settings(
            threshold=threshold,
            lung_threshold=lung_threshold,
            display_floor=display_floor,
            max_upload_mb=v("max-upload-mb"),
            token=token,
            allowed_hosts=allowed_hosts(v("host"), tuple(v("allowed-host"))),
            body_timeout_s=v("body-timeout"),
            blind=v("blind"),
            which=v("which"),
        )
        from qatacov_jax.webapp.annotation import AnnotationSession

        source = _source(v, threshold)
        # One server writes an annotations folder (runtime.locking): annotators share the
        # server, and a second server on the same folder is refused naming the first.
        stack = contextlib.ExitStack()
        engine, session = None, None
        try:
            if source is not None:
                stack.enter_context(run_dir_lock(v("annotations"), purpose="annotation server"))
                session = AnnotationSession(
                    source,
                    v("annotations"),
                    votes=v("votes"),
                    order=v("order"),
                    seed=v("seed"),
                    reference=v("reference"),
                )
            if exported:
                engine = load_export_engine(
                    v("model"),
                    candidates=v("candidates"),
                    annotate=session is not None,
                    batch_size=v("batch-size"),
                    wait_ms=v("batch-wait-ms"),
                )
            elif models is not None:
                engine = load_engine(
                    v("checkpoint"),
                    lung_checkpoint=v("lung-checkpoint"),
                    candidates=v("candidates"),
                    annotate=session is not None,
                    batch_size=v("batch-size"),
                    wait_ms=v("batch-wait-ms"),
                    which=v("which"),
                )
            if engine is not None and session is not None:
                session.source.predict = engine.candidates.predict
            app = create_app(engine, settings, session)
            config = uvicorn_config(app, host=v("host"), port=v("port"), **timeouts)
            where = f"http://{v('host')}:{v('port')}/"
            # Never the secret itself: logs are read by more people than the token is for.
            log.info("serving on %s%s", where, "?token=<the token>" if token else "")
            uvicorn.Server(config).run()
        except KeyboardInterrupt:
            pass  # uvicorn re-raises Ctrl-C after its graceful shutdown: a normal stop
        finally:
            if engine is not None:
                engine.close()
            stack.close()
        return 0

    return run_main(body)
