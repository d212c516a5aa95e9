"""`voicesearch serve [--host H] [--port P] [--workers N]`: run the HTTP service (uvicorn).

Unlike the other commands this one reads no settings itself: every worker process builds the
app (``service.app:create_app``) and reads them there; and it may re-execute the command line
once (``argv``) to set the allocator environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from service.pipeline.threads import inference_threads

# glibc hands freed memory back to the OS eagerly, so every inference re-faults its activation
# buffers: about a third of PyTorch's CPU time on a 2-core box. Keeping freed memory (these two
# knobs) measured 1.5x faster. They must be in the environment before the process starts.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)


def _with_malloc_tuning(argv: Sequence[str]) -> None:
    """Re-exec this command once with the allocator settings, unless the operator set them."""
    if os.environ.get("VOICESEARCH_NO_MALLOC_TUNING") or all(k in os.environ for k in MALLOC_ENV):
        return
    env = {**MALLOC_ENV, **os.environ}
    os.execve(sys.executable, [sys.executable, "-m", "service.cli", *argv], env)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _with_malloc_tuning(argv)
    import uvicorn

    if args.workers > 1 and "VOICESEARCH_INFERENCE_THREADS" not in os.environ:
        # N workers each using every core would oversubscribe the CPU; share out the cores
        # this process may really use (affinity, cgroup quota), not the machine's.
        threads = inference_threads(0, args.workers)
        os.environ["VOICESEARCH_INFERENCE_THREADS"] = str(threads)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0
