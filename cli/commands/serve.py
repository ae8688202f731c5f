"""`cas serve --store URL --listen HOST:PORT`: share a store over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

from cas.errors import UsageError
from cas.repo import DEFAULT_MAX_CHUNK
from cas.server.app import DEFAULT_MAX_PACK_UPLOADS
from cas.server.verify import DEFAULT_BODY_GRACE, MIN_BODY_RATE
from cas.sizes import parse_size
from cas.store import open_store
from cas_cli.common import refuse_json

DEFAULT_LISTEN = "127.0.0.1:8750"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `serve` command."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve a store over HTTP to other machines",
        description="Serve the store given by --store over HTTP (the protocol: cas docs http-api). "
        "Uploads are verified (hash and size) before they are stored. Clients use "
        "--store http(s)://HOST:PORT with their token in CAS_TOKEN.",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=DEFAULT_LISTEN,
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="bearer tokens, one 'SCOPE TOKEN' per line; scopes: read, write (create only), "
        "admin (delete)",
    )
    p.add_argument(
        "--anonymous-read",
        action="store_true",
        help="let requests without a token read (never write)",
    )
    p.add_argument(
        "--max-uploads",
        metavar="N",
        type=int,
        default=16,
        help="upload bodies buffered at once; more wait (default 16; batches of manifests "
        "and records are at most 32 MiB each)",
    )
    p.add_argument(
        "--max-pack-uploads",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_PACK_UPLOADS,
        help="packs received and verified at once; more wait (default %(default)s; memory "
        "~ N x 128 MiB at most)",
    )
    p.add_argument(
        "--body-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_BODY_GRACE,
        help=f"an upload body gets SECONDS plus one second per {MIN_BODY_RATE >> 10} KiB "
        "received; a slower one "
        "is refused (408) so it frees its upload slot (default %(default)g)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate chain")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument(
        "--max-chunk-size",
        metavar="SIZE",
        default=str(DEFAULT_MAX_CHUNK),
        help="largest chunk accepted, uncompressed (default 16M, the largest chunk put makes)",
    )
    p.set_defaults(run=run)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen wants HOST:PORT, got {text!r}")
    return host, int(port)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, or None for plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None:
        raise UsageError("--tls-key needs --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS certificate {cert}: {exc}") from None
    return context


def run(args: argparse.Namespace) -> int:
    """Execute `cas serve`."""
    refuse_json(args, "cas serve", "it serves until stopped and logs to stderr")
    from cas.server import Limits, TokenTable, build_app, configure_logging, serve

    host, port = parse_listen(args.listen)
    if args.token_file is None and not args.anonymous_read:
        raise UsageError("cas serve needs --token-file, --anonymous-read, or both")
    tokens = TokenTable.load(args.token_file) if args.token_file else TokenTable()
    if not args.body_timeout > 0:
        raise UsageError(
            f"--body-timeout must be a positive number of seconds, got {args.body_timeout}"
        )
    limits = Limits(
        max_chunk=parse_size(args.max_chunk_size, "--max-chunk-size"),
        body_grace=args.body_timeout,
    )
    tls = tls_context(args.tls_cert, args.tls_key)
    configure_logging(args.quiet)

    async def body() -> None:
        store = open_store(args.store, create=True)

        def announce(url: str) -> None:
            print(f"cas serve: {store.url} on {url}", file=sys.stderr, flush=True)

        app = build_app(
            store,
            tokens,
            anonymous_read=args.anonymous_read,
            limits=limits,
            max_uploads=args.max_uploads,
            max_pack_uploads=args.max_pack_uploads,
        )
        async with store:
            await serve(app, host, port, tls=tls, announce=announce)

    asyncio.run(body())
    return 0
