"""The Python session's worker: exec python blocks and doctest pycon blocks in one namespace, as a REPL would.

Started by ``sessions.PythonSession`` with two extra fds (requests in, answers out, one JSON object a line);
fd 1 and 2 belong to user code. Loaded by path, not imported as ``tests.docs``, so that the user's
``sys.path`` is that of ``python -c`` run in the workspace.
"""

from __future__ import annotations

import builtins
import doctest
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path


def _load_checking():
    spec = importlib.util.spec_from_file_location("_docs_checking", Path(__file__).with_name("checking.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exec(source: str, filename: str, lineno: int, namespace: dict) -> dict:
    """Exec a block; line numbers in a traceback are the page's (the source is padded to ``lineno``)."""
    try:
        code = compile("\n" * (lineno - 1) + source, filename, "exec")
        exec(code, namespace)
    except SystemExit as e:
        return {"ok": False, "error": f"the block raised SystemExit({e.code!r}); a block must not exit"}
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # drop this frame
        if isinstance(e, SyntaxError):
            tb = None
        return {"ok": False, "error": "".join(traceback.format_exception(type(e), e, tb))}
    return {"ok": True}


def _doctest(source: str, filename: str, lineno: int, namespace: dict, checking) -> dict:
    test = doctest.DocTestParser().get_doctest(
        source, namespace, f"{filename}:{lineno}", filename, lineno - 1
    )
    test.globs = namespace  # DocTest copies globs: names a pycon block defines must reach the next block
    runner = doctest.DocTestRunner(checker=checking.MaskingChecker(), optionflags=checking.FLAGS)
    report: list[str] = []
    result = runner.run(test, out=report.append, clear_globs=False)
    return {
        "ok": result.failed == 0,
        "error": "".join(report),
        "attempted": result.attempted,
    }


def main(request_fd: int, answer_fd: int) -> None:
    checking = _load_checking()
    sys.argv = [""]
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    with os.fdopen(request_fd, "r", encoding="utf-8") as requests, os.fdopen(answer_fd, "w") as answers:
        for line in requests:
            request = json.loads(line)
            args = (request["source"], request["filename"], request["lineno"], namespace)
            if request["kind"] == "exec":
                answer = _exec(*args)
            else:
                answer = _doctest(*args, checking)
            sys.stdout.flush()
            sys.stderr.flush()
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
