"""`voicesearch serve [--host H] [--port P] [--workers N]`: run the HTTP service (uvicorn).

Every worker process builds the app (``service.app:create_app``) and reads the settings itself;
this command reads them first only to refuse a bad configuration before anything starts (one
line, exit status 2), and it may re-execute the command line once (``argv``) to set the
allocator environment.

It binds 127.0.0.1 unless told otherwise, and refuses to serve an *open* API (no keys) on an
address other machines can reach unless the operator says so (``--allow-open``): enrollment and
deletion would be open to the whole network.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from service.core.config_errors import ConfigurationError
from service.core.logs import logging_config
from service.core.settings import Settings
from service.pipeline.threads import inference_threads

#: prometheus_client's multiprocess folder (see service.core.metrics; this module must not
#: import it: the variable has to be set before prometheus_client is first imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# glibc hands freed memory back to the OS eagerly, so every inference re-faults its activation
# buffers: about a third of PyTorch's CPU time on a 2-core box. Keeping freed memory (these two
# knobs) measured 1.5x faster. They must be in the environment before the process starts.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP service")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--allow-open",
        action="store_true",
        help="serve without API keys on a non-loopback address (a trusted network only)",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume other machines can reach it


def check_exposure(host: str, keys_enabled: bool, allow_open: bool) -> None:
    if keys_enabled or allow_open or is_loopback(host):
        return
    raise ConfigurationError(
        f"refusing to serve an open API on {host}: anyone who can reach it could enroll and "
        "delete speakers. Set VOICESEARCH_API_KEYS (or VOICESEARCH_API_KEYS_FILE), bind "
        "127.0.0.1, or pass --allow-open on a trusted network"
    )


def prepare_metrics_dir(settings: Settings) -> Path:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an emptied folder (``<data_dir>/metrics`` unless the
    operator chose one) before any worker starts: each worker writes its counters there and
    ``/metrics`` sums them (``service.core.metrics``). Emptied because files left by an earlier
    run would be summed in as if this server had counted them."""
    chosen = os.environ.get(MULTIPROC_ENV)
    folder = Path(chosen) if chosen else settings.data_dir / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # only prometheus_client's files: the folder may be shared
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder.resolve())
    return folder


def _with_malloc_tuning(argv: Sequence[str]) -> None:
    """Re-exec this command once with the allocator settings, unless the operator set them."""
    if os.environ.get("VOICESEARCH_NO_MALLOC_TUNING") or all(k in os.environ for k in MALLOC_ENV):
        return
    env = {**MALLOC_ENV, **os.environ}
    os.execve(sys.executable, [sys.executable, "-m", "service.cli", *argv], env)


def run(args: argparse.Namespace, argv: Sequence[str], settings: Settings) -> int:
    from service.api.auth import KeyRing

    keyring = KeyRing.from_settings(settings)  # a bad key configuration stops here, in one line
    check_exposure(args.host, keyring.enabled, args.allow_open)
    prepare_metrics_dir(settings)  # before the re-exec: it inherits the variable
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
        # Applied in every worker process, so N workers log exactly like one.
        log_config=logging_config(args.log_level, settings.log_format),
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
        # The live WebSocket's frame cap, enforced by the protocol library before a frame is
        # buffered whole (the route checks it again, with a JSON error, for other servers).
        ws_max_size=settings.live_max_frame_bytes,
    )
    return 0
