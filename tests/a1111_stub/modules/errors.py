"""Mirror of A1111's error reporting: callers swallow exceptions and only log them through here."""

import sys
import traceback

exception_records: list[dict] = []
"""Last few recorded exceptions, newest last (A1111 keeps 5); tests inspect this to see swallowed errors."""


def format_exception(e: BaseException, tb) -> dict:
    frames = [[f"{f.filename}, line {f.lineno}, {f.name}", f.line] for f in traceback.extract_tb(tb)]
    return {"exception": str(e), "traceback": frames}


def record_exception() -> None:
    _, e, tb = sys.exc_info()
    if e is None or (exception_records and exception_records[-1].get("object") is e):
        return
    exception_records.append({**format_exception(e, tb), "object": e})
    del exception_records[:-5]


def report(message: str, *, exc_info: bool = False) -> None:
    """Print ``*** message`` (plus the current traceback) to stderr, as A1111 does, and record it."""
    record_exception()
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), "---", sep="\n", file=sys.stderr)


def display(e: Exception, task, *, full_traceback: bool = False) -> None:
    record_exception()
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(*traceback.TracebackException.from_exception(e).format(), sep="", file=sys.stderr)
