"""The reference grammar: normalisation and one-line errors that say what is wrong."""

from __future__ import annotations

import hashlib

import pytest

from transship.digest import Digest
from transship.errors import ExitCode, InvalidReferenceError, UsageError
from transship.layout.index import check_tag
from transship.plan import PlanError
from transship.reference import Reference, is_tag, parse_prefix, without_userinfo
from transship.tkg.script import entries_from_old_script

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", None, None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("docker.io/busybox", "docker.io", "library/busybox", None, None),
        ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
        ("user/app", "docker.io", "user/app", None, None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None),
        (
            "127.0.0.1:5000/tkg/antrea:v1.2_vmware.1",
            "127.0.0.1:5000",
            "tkg/antrea",
            "v1.2_vmware.1",
            None,
        ),
        (
            "projects.registry.vmware.com/tkg/packages/core/antrea:v1.2.3_vmware.4-tkg.1-advanced",
            "projects.registry.vmware.com",
            "tkg/packages/core/antrea",
            "v1.2.3_vmware.4-tkg.1-advanced",
            None,
        ),
        (f"reg.example/app@{D}", "reg.example", "app", None, D),
        (f"reg.example/app:v1@{D}", "reg.example", "app", "v1", D),
        ("[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
        ("reg.example/a__b/c-d/e.f:x", "reg.example", "a__b/c-d/e.f", "x", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest


def test_round_trip_and_identifier():
    ref = Reference.parse(f"reg.example:443/a/b:v1@{D}")
    assert str(ref) == f"reg.example:443/a/b:v1@{D}"
    assert ref.identifier == D
    assert Reference.parse("reg.example/a").identifier == "latest"
    assert Reference.parse("busybox").api_host == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        (" app", "white space"),
        ("Reg.example/App:v1", "lowercase"),
        ("reg.example/app:", "tag ''"),
        ("reg.example/app:-bad", "tag '-bad'"),
        ("reg.example//app", "empty path component"),
        ("reg.example/app/", "empty path component"),
        ("reg.example/app@sha256:abc", "64 lowercase hex"),
        ("reg.example/app@md5:" + "a" * 32, "unsupported algorithm"),
        ("reg.example/app@sha256:../../x", "expected"),
        ("reg.example/" + "a" * 256, "longer than 255"),
        ("reg_example:5000/app", "not a valid host"),
        (
            "docker://reg.example/app:v1",
            "drop the docker:// prefix (transship takes 'reg.example/app:v1')",
        ),
        ("https://reg.example/app", "drop the https:// prefix"),
        ("127.0.0.1:5000", "names a registry, not an image"),
        ("localhost:5000", "names a registry, not an image"),
        ("registry.example:443", "e.g. registry.example:443/REPO:TAG"),
        # the grammar is ASCII: a Unicode letter or digit in a tag used to pass (`\w`) and
        # reach the registry, which refused the push as if the repository were missing (exit 4)
        ("reg.example/app:v\u00e91", "tag 'v\u00e91'"),
        ("reg.example/app:1\u0663", "tag '1\u0663'"),
        ("reg.example/app:\u00e9", "tag '\u00e9'"),
        # a newline inside the text used to pass (`$` matches before a final newline) and was
        # dropped from the URL, so the image landed under another name than the one given
        ("reg.example/lib\n/app:v1", "repository component 'lib\\n'"),
        ("reg.example\n/app:v1", "registry host 'reg.example\\n'"),
        ("reg.example/app:v1\n@sha256:" + "a" * 64, "tag 'v1\\n'"),
    ],
)
def test_invalid(text: str, fragment: str):
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert info.value.exit_code == ExitCode.USAGE


def test_digest_validation():
    assert str(Digest.parse(D)) == D
    assert Digest.of(b"") == Digest.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    for bad in ("sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha1:" + "a" * 40, "nocolon"):
        with pytest.raises(Exception) as info:
            Digest.parse(bad)
        assert info.value.exit_code == ExitCode.USAGE  # type: ignore[attr-defined]


def test_one_prefix_check_for_every_prefix() -> None:
    assert parse_prefix(" harbor.corp/tkg/ ") == "harbor.corp/tkg"
    assert parse_prefix("127.0.0.1:5443") == "127.0.0.1:5443"
    assert parse_prefix("localhost/a/b") == "localhost/a/b"
    for bad, why in [
        ("", "give host"),
        ("tkg/antrea", "'tkg' is not a registry host"),
        ("https://harbor.corp/tkg", "without a scheme"),
        ("harbor.corp/tkg:v1", "is not a registry prefix"),
        ("harbor.corp/tkg@sha256:" + "a" * 64, "is not a registry prefix"),
        ("harbor.corp//tkg", "empty path component"),
    ]:
        with pytest.raises(InvalidReferenceError, match=why) as info:
            parse_prefix(bad, "--dest")
        assert str(info.value).startswith(f"--dest {bad!r} is not a registry prefix")
        assert info.value.exit_code == ExitCode.USAGE
    with pytest.raises(InvalidReferenceError, match="and a project"):
        parse_prefix("harbor.corp", "--dest", need_path=True)


def test_a_reference_is_parsed_once_per_run_and_a_bad_one_refused_every_time() -> None:
    """Plan, tasks and engine parse the same references again: the immutable result is kept;
    a refusal is never kept (each caller gets its own error)."""
    assert Reference.parse("reg.example/app:v1") is Reference.parse("reg.example/app:v1")
    for _ in range(2):
        with pytest.raises(InvalidReferenceError, match="tag"):
            Reference.parse("reg.example/app:bad tag")


@pytest.mark.parametrize("tag", ["v\u00e91", "1\u0663", "v1\n"])
def test_layout_tag_check_is_the_ascii_grammar(tag: str) -> None:
    """A layout or tar a save writes refuses the tags the reference grammar refuses."""
    from transship.errors import UsageError
    from transship.layout.index import check_tag

    with pytest.raises(UsageError, match="must be 1-128 of letters"):
        check_tag(tag, "test")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("alice:s3cret-Pa55@reg.example:5000/app:v1", "***@reg.example:5000/app:v1"),
        ("https://alice:s3cret-Pa55@reg.example/app", "https://***@reg.example/app"),
        ("alice:s3c/ret@Pa55@reg.example/app", "***@reg.example/app"),
    ],
)
def test_credentials_in_a_reference_are_refused_without_echoing_them(text: str, masked: str):
    """`user:password@host/…` used to be echoed whole in the bad-reference error (the part
    before `@` read as a repository, the rest as a digest): the password reached the terminal
    and CI logs. The error masks it and says where credentials go."""
    for parse in (Reference.parse, parse_prefix):
        with pytest.raises(InvalidReferenceError) as info:
            parse(text)
        message = str(info.value)
        assert masked in message and "--src-creds/--dest-creds" in message
        assert "s3c" not in message and "Pa55" not in message


def test_a_digest_is_not_taken_for_credentials():
    for text in (f"busybox:1.0@{D}", f"reg.example:5000/app:v1@{D}", f"reg.example/app@{D}"):
        assert Reference.parse(text).digest == Digest.parse(D)


def test_a_digest_holding_a_slash_is_not_taken_for_credentials():
    """`host:5000/app@sha256:../../etc/passwd` is a bad digest (and says so), not credentials:
    what follows its `@` is no host[:port]/."""
    with pytest.raises(InvalidReferenceError, match="expected 'sha256:") as info:
        Reference.parse("127.0.0.1:5000/app@sha256:../../etc/passwd")
    assert "***" not in str(info.value)


def test_a_huge_bogus_reference_is_refused_at_once():
    """The credentials check must not backtrack: a damaged list or plan line of 1 MB full of
    ':' took the first version of it (`.*:.*@`) close to an hour. The bound is generous (the
    check is linear and takes milliseconds); it only catches a quadratic scan."""
    import signal

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("the reference check did not finish within 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 60)
    try:
        with pytest.raises(InvalidReferenceError):
            Reference.parse("a:" * 500_000)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_text_far_longer_than_a_reference_is_refused_unscanned_and_unquoted() -> None:
    """The credentials scan is linear but slow per character (a hostile 16 MiB line of '@host'
    took ~9 s): text far beyond the name limits is refused as too long first, and not quoted
    (where credentials in it would end is not looked for)."""
    hostile = "a:" + "@a" * 100_000  # every '@' is tried as the end of user:password
    assert without_userinfo(hostile) == f"<{len(hostile)} characters, not shown>"
    for parse in (Reference.parse, parse_prefix):
        with pytest.raises(InvalidReferenceError, match="far longer than any reference") as info:
            parse(hostile)
        assert len(str(info.value)) < 300 and "@a@a" not in str(info.value)
    with pytest.raises(PlanError, match=r"^s\.sh:1: -i value of \d+ characters: far longer"):
        entries_from_old_script(f"imgpkg copy -i {hostile} --to-repo h.local/a\n", "s.sh")
    # the longest real references are untouched
    longest = f"{'h' * 200}.example:5000/{'p' * 255}:{'t' * 128}@sha512:{'0' * 128}"
    assert without_userinfo(f"u:{'p' * 2000}@{longest}") == f"***@{longest}"


def test_a_large_plan_is_parsed_once_per_reference_and_digest() -> None:
    """At 4096 kept, a 6000-entry plan evicted on each pass what the next one needed: the
    second pass over the same texts had no hit at all. Now every text of the second pass hits."""
    n = 6000
    refs = [f"reg.example/kept/app{i}:v1" for i in range(n)]
    digests = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(n)]
    for text in refs:
        Reference.parse(text)
    for text in digests:
        Digest.parse(text)
    ref_hits = Reference.parse.cache_info().hits
    digest_hits = Digest.parse.cache_info().hits
    again = [Reference.parse(text) for text in refs]
    assert Reference.parse.cache_info().hits - ref_hits == n
    assert [str(r) for r in again] == refs
    for text in digests:
        Digest.parse(text)
    assert Digest.parse.cache_info().hits - digest_hits == n


def test_one_tag_check_for_references_layouts_and_serve() -> None:
    """serve's own pattern took any Unicode letter (`\\w`) and a final newline (`$`): the
    layout index, serve and references now share `is_tag`, ASCII and `\\Z`."""
    for good in ("v1", "_x", "1.2.3-rc_4", "a" * 128):
        assert is_tag(good), good
    for bad in ("vé1", "v1\n", "", "-v1", ".v1", "a" * 129, "v1 ", "v:1", "ｖ1"):
        assert not is_tag(bad), bad
        with pytest.raises(UsageError):
            check_tag(bad, "here")
