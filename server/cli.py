"""`chextriev serve`: the production server (waitress), loopback by default.

``--workers N`` (N > 1) binds the socket once, then forks N processes that each build their
own app (model, index, database loaded after the fork) and serve the shared socket with
``--threads`` threads each. A non-loopback ``--host`` needs ``--token-file`` (or
``CHEXTRIEV_AUTH_TOKEN``): the server refuses to start otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from chextriev.errors import ChextrievError
from chextriev.precision import PRECISIONS, default_precision

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the similar-case search API and web page",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint (.ckpt) the index was built with")
    parser.add_argument("--db", default=None,
                        help="catalog database URL (default sqlite:///INDEX_DIR/catalog.sqlite)")
    parser.add_argument("--index-dir", type=Path, required=True, help="folder holding the Faiss index")
    parser.add_argument("--detector", type=Path, default=None, help="anatomy detector weights (optional)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--threads", type=int, default=4, help="threads per process (default 4)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument("--precision", default=default_precision(), choices=PRECISIONS,
                        help="auto (default; $CHEXTRIEV_PRECISION overrides): bf16 where the CPU has AMX or AVX-512 bf16 or the GPU has bf16, else fp32")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="intra-op threads per worker (default: torch's choice; 1 is best on a busy CPU)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding the bearer token clients must send (required off loopback)")
    parser.add_argument("--max-upload-mb", type=int, default=64, help="upload limit in MiB (default 64)")
    parser.set_defaults(func=serve)


def read_token(path: Path | None) -> str | None:
    """The bearer token from ``path`` (stripped), else ``CHEXTRIEV_AUTH_TOKEN``, else ``None``."""
    if path is None:
        return os.environ.get("CHEXTRIEV_AUTH_TOKEN") or None
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ChextrievError(f"cannot read the token file {path}: {error.strerror}") from None
    if len(token) < 16:
        raise ChextrievError(f"the token in {path} is shorter than 16 characters: use a long random one "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def app_config(args: argparse.Namespace) -> dict:
    if args.workers < 1 or args.threads < 1:
        raise ChextrievError("--workers and --threads must be at least 1")
    for flag, path in (("--checkpoint", args.checkpoint), ("--index-dir", args.index_dir)):
        if not path.exists():
            raise ChextrievError(f"{flag} {path} does not exist")
    return {"CHECKPOINT": str(args.checkpoint), "DB_URL": args.db, "INDEX_DIR": str(args.index_dir),
            "DETECTOR": str(args.detector) if args.detector else None, "DEVICE": args.device,
            "TORCH_THREADS": args.torch_threads, "PRECISION": args.precision,
            "HOST": args.host, "AUTH_TOKEN": read_token(args.token_file),
            "MAX_CONTENT_LENGTH": args.max_upload_mb * 1024 * 1024}


def _serve_socket(config: dict, sock: socket.socket, threads: int) -> None:
    import waitress

    from server import create_app

    app = create_app(config)
    waitress.serve(app, sockets=[sock], threads=threads, ident="chextriev")


def serve(args: argparse.Namespace) -> int:
    from server.config import check_bind_safety

    config = app_config(args)
    check_bind_safety(args.host, config["AUTH_TOKEN"])
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as error:
        raise ChextrievError(f"cannot bind {args.host}:{args.port}: {error.strerror}") from None
    sock.listen(1024)
    port = sock.getsockname()[1]
    log.info("serving on http://%s:%d/ (%d worker(s) x %d threads%s)", args.host, port, args.workers,
             args.threads, ", bearer token required" if config["AUTH_TOKEN"] else "")
    if args.workers == 1:
        _serve_socket(config, sock, args.threads)
        return 0
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # child: build the app (and load the model) after the fork
            code = 0
            try:
                _serve_socket(config, sock, args.threads)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            os._exit(code)
        children.append(pid)

    def _stop(signum, frame):
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m server.cli --checkpoint ...``: the same as ``chextriev serve ...``."""
    parser = argparse.ArgumentParser(prog="python -m server.cli")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ChextrievError as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
