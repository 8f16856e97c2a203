"""Running profiled work from the CLI so that a failed or interrupted run still saves what
it measured (status failed/incomplete) and the user gets one line, not a traceback."""

from __future__ import annotations

import datetime as _dt
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from lmprof.cli.report_console import report_console
from lmprof.errors import LmprofError, ModelNotFoundError, UsageError
from lmprof.record.run import STATUS_COMPLETE, STATUS_FAILED, STATUS_INCOMPLETE
from lmprof.render.exports import write_exports
from lmprof.render.html_report import write_html_report
from lmprof.render.terminal import render_run
from lmprof.session import ProfileSession

EXIT_INTERRUPTED = 130
# Errors found before anything was measured worth keeping: the input is wrong, so no
# run folder is written at all.
INPUT_ERRORS = (UsageError, ModelNotFoundError)


def default_run_dir(label: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")[:60] or "run"
    return Path("lmprof-runs") / f"{stamp}-{slug}"


def check_writable(out: Path) -> None:
    """Fail before running if the run folder could not be written (creates nothing)."""
    probe = out.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write the run to '{out}': '{probe}' is a file; pass --out to a folder")
    try:  # os.access says yes to root on read-only places such as /proc: really try
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError:
        raise UsageError(
            f"cannot write the run to '{out}': '{probe}' is not writable; pass --out to a writable folder"
        ) from None


def run_profiled(
    session: ProfileSession,
    work: Callable[[], None],
    out: Path,
    *,
    as_json: bool,
    debug: bool,
) -> int:
    """Run `work` in `session`, save the Run to `out`, print the summary. Returns an exit code."""
    session.start()
    error: BaseException | None = None
    status = STATUS_COMPLETE
    code = 0
    try:
        work()
    except KeyboardInterrupt as exc:
        status, error, code = STATUS_INCOMPLETE, exc, EXIT_INTERRUPTED
    except INPUT_ERRORS as exc:
        session.stop(STATUS_FAILED, exc)
        raise
    except LmprofError as exc:
        status, error, code = STATUS_FAILED, exc, exc.exit_code
    except SystemExit as exc:  # a profiled script calling sys.exit
        exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exit_code != 0:
            status, error, code = STATUS_FAILED, exc, exit_code
    except Exception as exc:  # the profiled code failed: save what was measured, say why
        status, error, code = STATUS_FAILED, exc, 1
    if error is not None and debug:
        traceback.print_exception(error)
    run = session.stop(status, error)
    session.save(out)
    write_exports(run, out)
    write_html_report(run, out)
    if as_json:
        print(run.to_json())
    else:
        rendered = render_run(run, out)
        report_console(rendered).print(rendered)
    if status == STATUS_INCOMPLETE:
        print(f"lmprof: interrupted; the partial run was saved to {out}/run.json", file=sys.stderr)
    elif status == STATUS_FAILED:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        prefix = "" if isinstance(error, LmprofError) else f"{type(error).__name__}: "
        print(f"lmprof: error: {prefix}{first} (the failed run was saved to {out}/run.json)", file=sys.stderr)
    return code
