"""`transship serve ARCHIVE`: options in, one "serving … on …" line (and TLS hints) out."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from pathlib import Path

import click

from transship.commands.archivepaths import existing_archives
from transship.commands.common import log_formatter
from transship.errors import UsageError
from transship.remote.tls import load_ca
from transship.serve.archive import ServedArchive
from transship.serve.auth import Htpasswd
from transship.serve.server import Listen, Ready, serve, tls_names, write_ready_file
from transship.serve.tls import TLSFiles, check_san, self_signed, server_context
from transship.tkg.ca import refuse_private_key, tkg_ca_form
from transship.tkg.config import TkgSettings


@click.command("serve")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option(
    "--base",
    "bases",
    multiple=True,
    type=click.Path(path_type=Path),
    callback=existing_archives,
    metavar="OLD_ARCHIVE",
    help="For an increment (save --since): the archive it was saved on top of.",
)
@click.option(
    "--listen",
    default="127.0.0.1:5000",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to bind (port 0: any free port, see --ready-file).",
)
@click.option(
    "--prefix",
    metavar="PATH",
    help="Serve images at HOST:PORT/PATH/<repository> (default: the path of the archive's "
    "destination prefix).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Server certificate (PEM, chain allowed).",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", help="Its key."
)
@click.option(
    "--tls-self-signed",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Make (or reuse) a CA and server certificate in DIR; clients trust DIR/ca.crt.",
)
@click.option("--san", multiple=True, metavar="NAME", help="Another name for the certificate.")
@click.option(
    "--htpasswd",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Require Basic auth against a bcrypt htpasswd file (htpasswd -B).",
)
@click.option(
    "--plain-http", is_flag=True, help="Allow plain HTTP on an address other than loopback."
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JSON (address, url, repository, ca) here once listening.",
)
@click.option("-v", "--verbose", count=True, help="More logging.")
@click.option("-q", "--quiet", is_flag=True, help="No access log, only errors.")
def serve_command(
    archive: Path,
    bases: tuple[Path, ...],
    listen: str,
    prefix: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_self_signed: Path | None,
    san: tuple[str, ...],
    htpasswd: Path | None,
    plain_http: bool,
    ready_file: Path | None,
    verbose: int,
    quiet: bool,
) -> int:
    """Serve ARCHIVE (layout directory, tar or split volumes, read in place) as a read-only
    registry, so TKG or any client pulls from it with no other registry.

    Without TLS options it serves plain HTTP, on a loopback address only. Ctrl-C stops it.
    """
    _logging(verbose, quiet)
    where = Listen.parse(listen)
    files = _tls_files(where, tls_cert, tls_key, tls_self_signed, list(san))
    if files is None and not where.loopback and not plain_http:
        raise UsageError(
            f"--listen {listen} is not a loopback address: give --tls-self-signed DIR or "
            "--tls-cert/--tls-key, or --plain-http to serve without TLS anyway"
        )
    if htpasswd is not None and files is None and not where.loopback:
        raise UsageError("--htpasswd needs TLS off loopback: passwords would cross in clear")
    auth = Htpasswd.load(htpasswd) if htpasswd else None
    context = server_context(files) if files else None
    asyncio.run(_run(archive, list(bases), prefix, where, context, auth, files, ready_file))
    return 0


async def _run(
    archive: Path,
    bases: list[Path],
    prefix: str | None,
    where: Listen,
    context: ssl.SSLContext | None,
    auth: Htpasswd | None,
    files: TLSFiles | None,
    ready_file: Path | None,
) -> None:
    served, _info = await ServedArchive.open(archive, bases, prefix)
    for problem in served.problems:
        click.echo(f"transship: warning: {problem}", err=True)

    def ready(info: Ready) -> None:
        click.echo(
            f"serving {served.label} ({info.repositories} repositories, {info.tags} tags) "
            f"on {info.url} as {info.repository}",
            err=True,
        )
        if files is not None and files.ca is not None:
            _print_ca(files.ca, info)
        if ready_file is not None:
            write_ready_file(ready_file, info, files.ca if files else None)

    try:
        await serve(
            served,
            where,
            ssl_context=context,
            auth=auth,
            on_ready=ready,
        )
    finally:
        await served.close()
    click.echo("transship: stopped", err=True)


def _tls_files(
    where: Listen,
    cert: Path | None,
    key: Path | None,
    self_signed_dir: Path | None,
    san: list[str],
) -> TLSFiles | None:
    if self_signed_dir is not None:
        if cert or key:
            raise UsageError("give either --tls-self-signed or --tls-cert/--tls-key, not both")
        return self_signed(self_signed_dir, tls_names(where, [check_san(n) for n in san]))
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if san:
        raise UsageError("--san only applies to --tls-self-signed")
    return TLSFiles(cert, key) if cert is not None and key is not None else None


def _print_ca(ca: Path, ready: Ready) -> None:
    """The CA file, its one-line base64 (TKG's form) and the `tanzu config set` lines."""
    bundle = load_ca(str(ca))
    refuse_private_key(bundle)
    encoded = tkg_ca_form(bundle)
    click.echo(f"CA certificate: {ca}  (skopeo --cert-dir {ca.parent})", err=True)
    click.echo(f"CA base64: {encoded}", err=True)
    settings = TkgSettings(repository=ready.repository, ca_base64=encoded)
    for line in settings.tanzu_commands():
        click.echo(line, err=True)


def _logging(verbose: int, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("transship.serve.access")
    access.handlers[:] = [handler]
    access.propagate = False
    access.setLevel(logging.ERROR if quiet else logging.INFO)
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(log_formatter(verbose, "transship: %(levelname)s: %(message)s"))
    main = logging.getLogger("transship.serve")
    main.handlers[:] = [errors]
    main.propagate = False
    main.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    # aiohttp logs a traceback for requests its parser rejects (a line over MAX_LINE, a
    # garbage method); the client got its 400 and the access log has the line: enough
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL if not verbose else logging.INFO)


COMMANDS = [serve_command]
