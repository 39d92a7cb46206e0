"""`transship ca encode|decode|check`: the registry CA in the form TKG wants, and whether it works.

TKG takes the CA as `TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE`: the PEM file base64-encoded on
one line. The vendor's procedure does this with `base64 -w 0` and only finds out at cluster
creation whether the CA was the right one; `ca check` finds out now.
"""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import click

from transship.cacheck import Target, check_registry
from transship.errors import UsageError
from transship.fsutil import write_atomic
from transship.remote.tls import CABundle, load_ca
from transship.tkg.ca import refuse_private_key, tkg_ca_form

CA_ENV = "TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE"


@click.group("ca")
def ca_group() -> None:
    """The registry CA: encode it for TKG, decode it back, check a registry with it."""


def _describe(bundle: CABundle) -> str:
    certs = bundle.certificates
    first = certs[0]
    more = f" and {len(certs) - 1} more" if len(certs) > 1 else ""
    until = first.not_valid_after_utc.strftime("%Y-%m-%d")
    return f"CA {first.subject.rfc4514_string()!r}{more}, valid until {until}"


#: a CA bundle is a few KB; standard input beyond this is not one (`< /dev/zero` never ends)
MAX_STDIN_BYTES = 1024 * 1024


def _read_stdin() -> str:
    """Standard input as text, bounded: binary or endless input is one usage line."""
    data: bytes = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise UsageError(
            f"standard input: larger than {MAX_STDIN_BYTES} bytes; give the CA's PEM or its base64"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"standard input: not text (byte {exc.start}); give the CA's PEM or its base64 (a "
            "DER file: openssl x509 -inform der -in FILE -out ca.pem)"
        ) from None


@ca_group.command("encode", short_help="A PEM CA file as the one-line base64 TKG takes.")
@click.argument("file", metavar="FILE|-")
@click.option("-q", "--quiet", is_flag=True, help="Do not describe the CA on stderr.")
def ca_encode(file: str, quiet: bool) -> int:
    """Print the one-line base64 of a PEM CA file, as TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE
    takes it: the same characters as `base64 -w 0 FILE` (plus a newline).

    The certificate must be a CA (basicConstraints CA:TRUE, or an old self-signed root), and the
    file must hold no private key. `-` reads the PEM from standard input.
    """
    if file == "-":
        text = _read_stdin()
        if "-----BEGIN" not in text:
            raise UsageError("standard input holds no PEM certificate")
        bundle = load_ca(text)
    else:
        path = Path(file).expanduser()
        if not path.is_file():
            raise UsageError(f"CA file {file} does not exist or is not a file")
        bundle = load_ca(str(path))
    refuse_private_key(bundle)
    click.echo(tkg_ca_form(bundle))
    if not quiet:
        click.echo(f"transship: encoded {_describe(bundle)}", err=True)
    return 0


@ca_group.command("decode", short_help="TKG's one-line base64 CA back to PEM.")
@click.argument("value", metavar="BASE64|-")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the PEM to FILE (atomically) instead of standard output.",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not describe the CA on stderr.")
def ca_decode(value: str, output: Path | None, quiet: bool) -> int:
    """Turn the base64 form back into the PEM file (as `base64 -d`), checking it is a CA.

    `-` reads the base64 from standard input, e.g. `tanzu config get | …`; a file holding the
    base64 form is read too.
    """
    text = _read_stdin().strip() if value == "-" else value
    if not text:
        raise UsageError("no base64 given")
    bundle = load_ca(text)
    refuse_private_key(bundle)
    if output is not None:
        write_atomic(output, bundle.pem)
    else:
        sys.stdout.write(bundle.pem.decode("ascii", "replace"))
        sys.stdout.flush()
    if not quiet:
        where = f" to {output}" if output else ""
        click.echo(f"transship: decoded {_describe(bundle)}{where}", err=True)
    return 0


@ca_group.command("check", short_help="Is a registry's TLS trusted, by which CA, or why not.")
@click.argument("registry", metavar="REGISTRY")
@click.option(
    "--ca",
    "ca",
    metavar="FILE|BASE64",
    envvar=CA_ENV,
    show_envvar=True,
    help="The CA to trust besides the system roots: a PEM file or its base64 (TKG form).",
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per connection.")
def ca_check(registry: str, ca: str | None, timeout: float) -> int:
    """Connect to REGISTRY (host[:port], a URL or a TKG repository prefix) and say in plain
    words whether its TLS certificate is trusted, by which CA, and if not, why.

    \b
    Exit codes:
       0  trusted; /v2/ answers (also when it asks for credentials: TLS is fine)
       1  bad REGISTRY or --ca
       5  unknown authority: no trusted CA signed the chain (pass --ca)
       6  unreachable: DNS failure, connection refused, timeout
       8  not a registry: TLS is fine but /v2/ answers 404, a web page, a redirect or 5xx
      10  hostname mismatch: the certificate names other hosts
      11  certificate expired, or not yet valid
      12  the port speaks plain HTTP, not TLS
      13  any other TLS failure (handshake refused, bad signature, ...)
    """
    if not math.isfinite(timeout) or timeout <= 0:  # 0, -1, nan: 'no answer within 0 s', exit 6
        raise UsageError(f"--timeout {timeout}: give a number of seconds above 0, e.g. 10")
    target = Target.parse(registry)
    bundle = load_ca(ca, given_as="--ca") if ca else None
    result = asyncio.run(check_registry(target, bundle, timeout=timeout))
    for line in result.lines():
        click.echo(line)
    if not result.ok:
        hint = f" ({result.hint})" if result.hint else ""
        click.echo(f"transship: error: {target.address}: {result.summary}{hint}", err=True)
    return result.exit_code


COMMANDS = [ca_group]
