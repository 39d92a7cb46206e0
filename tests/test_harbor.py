"""Harbor as a destination, against the Harbor emulator (tests/harness/harbor.py) in front of a
real `docker-registry`: project detection and creation, missing-project preflight, the role
needed, storage quota, and retention-safe (HEAD-only) checks."""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clirunner import CLI
from harness.harbor import ADMIN_PASSWORD, HarborEmulator
from harness.pki import PKI
from harness.registry import RegistryProcess
from harness.seed import seed_image, seed_index

from transship.connect import RegistryPool, SideSettings
from transship.errors import (
    ExitCode,
    PermissionDeniedError,
    RegistryError,
    UsageError,
    shown_text,
)
from transship.harbor.api import HarborAPI, ProjectRefused, _message, parse_quota
from transship.harbor.quota import is_quota_refusal, quota_detail
from transship.layout import OCILayout
from transship.plan.model import Plan, PlanEntry
from transship.remote.auth import Credentials
from transship.remote.registry import Registry, RegistryOptions
from transship.remote.tls import load_ca

BOB = ("bob", "bob-Pa55-secret")
ROBOT = ("robot$ci", "robot-Pa55-secret")
ADMIN = ("admin", ADMIN_PASSWORD)
PASSWORDS = (ADMIN_PASSWORD, BOB[1], ROBOT[1])

MakeHarbor = Callable[..., HarborEmulator]


@pytest.fixture
def harbor(make_registry: Callable[..., RegistryProcess], pki: PKI) -> Iterator[MakeHarbor]:
    made: list[HarborEmulator] = []

    def make(**kw: Any) -> HarborEmulator:
        kw.setdefault("tls", pki.server)
        kw.setdefault("users", dict([ADMIN, BOB, ROBOT]))
        emulator = HarborEmulator(make_registry("plain"), **kw).start()
        made.append(emulator)
        return emulator

    yield make
    for emulator in made:
        emulator.stop()


def call(
    h: HarborEmulator,
    pki: PKI,
    method: str,
    path: str,
    *,
    user: tuple[str, str] | None = ADMIN,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem_path))
    conn = http.client.HTTPSConnection("127.0.0.1", h.port, context=ctx, timeout=10)
    hdrs = dict(headers or {})
    if user is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(user).encode()).decode()
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def error_code(raw: bytes) -> str:
    """The swagger `Errors` shape: {"errors": [{"code", "message"}]}."""
    doc = json.loads(raw)
    assert set(doc) == {"errors"} and set(doc["errors"][0]) == {"code", "message"}
    return str(doc["errors"][0]["code"])


def _listing(path: str) -> bool:
    """A tag list or the catalog: what a check asks besides HEADs (never a pull)."""
    return "/tags/list" in path or path.startswith("/v2/_catalog")


def dest_args(pki: PKI, user: tuple[str, str] = ADMIN) -> list[str]:
    return ["--dest-ca", str(pki.ca_pem_path), "--dest-creds", ":".join(user)]


def write_plan(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """A plan copying each source to a destination repository under tag v1."""
    entries = tuple(PlanEntry.create(src, dst, tags=("v1",)) for src, dst in pairs)
    path.write_text(Plan(entries).to_yaml())
    return path


def no_secrets(text: str) -> None:
    for secret in PASSWORDS:
        assert secret not in text


# -- the emulator follows the swagger --------------------------------------------------------


def test_emulator_project_api_follows_the_swagger(harbor: MakeHarbor, pki: PKI) -> None:
    h = harbor()
    assert call(h, pki, "GET", "/api/v2.0/ping", user=None)[2] == b"Pong"
    status, _, raw = call(h, pki, "GET", "/api/v2.0/systeminfo", user=None)
    anonymous = json.loads(raw)
    assert status == 200 and "auth_mode" in anonymous
    assert "project_creation_restriction" not in anonymous  # only for a logged-in caller
    info = json.loads(call(h, pki, "GET", "/api/v2.0/systeminfo")[2])
    assert info["project_creation_restriction"] == "adminonly"
    assert call(h, pki, "HEAD", "/api/v2.0/projects?project_name=library")[0] == 200
    assert call(h, pki, "HEAD", "/api/v2.0/projects?project_name=tkg")[0] == 404
    assert call(h, pki, "HEAD", "/api/v2.0/projects?project_name=tkg", user=None)[0] == 401
    req = {"project_name": "tkg", "metadata": {"public": "false"}, "storage_limit": 1048576}
    status, headers, raw = call(h, pki, "POST", "/api/v2.0/projects", body=req)
    assert (status, raw) == (201, b"") and headers["location"].startswith("/api/v2.0/projects/")
    status, _, raw = call(h, pki, "POST", "/api/v2.0/projects", body=req)
    assert status == 409 and error_code(raw) == "CONFLICT"
    status, _, raw = call(h, pki, "POST", "/api/v2.0/projects", body={"project_name": "Bad!"})
    assert status == 400 and error_code(raw) == "BAD_REQUEST"
    status, _, raw = call(h, pki, "POST", "/api/v2.0/projects", body=req, user=BOB)
    assert status == 403 and error_code(raw) == "FORBIDDEN"
    status, _, raw = call(h, pki, "POST", "/api/v2.0/projects", body=req, user=None)
    assert status == 401 and error_code(raw) == "UNAUTHORIZED"
    project = json.loads(
        call(h, pki, "GET", "/api/v2.0/projects/tkg", headers={"X-Is-Resource-Name": "true"})[2]
    )
    assert project["name"] == "tkg" and project["metadata"] == {"public": "false"}
    summary = json.loads(call(h, pki, "GET", "/api/v2.0/projects/tkg/summary")[2])
    assert summary["quota"] == {"hard": {"storage": 1048576}, "used": {"storage": 0}}
    status, _, raw = call(h, pki, "GET", "/api/v2.0/projects/nope")
    assert status == 404 and error_code(raw) == "NOT_FOUND"


def test_emulator_refuses_pushes_into_unknown_projects_like_harbor(
    harbor: MakeHarbor, pki: PKI
) -> None:
    basic = harbor(auth="basic")
    status, _, raw = call(basic, pki, "POST", "/v2/nope/app/blobs/uploads/")
    assert status == 404 and error_code(raw) == "NAME_UNKNOWN"
    assert call(basic, pki, "POST", "/v2/library/app/blobs/uploads/")[0] == 202
    bearer = harbor()
    status, headers, _ = call(bearer, pki, "GET", "/v2/", user=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer realm=")
    status, _, raw = call(
        bearer,
        pki,
        "GET",
        "/service/token?service=harbor-registry&scope=repository:nope/app:pull,push",
    )
    token = json.loads(raw)["token"]
    status, headers, _ = call(
        bearer,
        pki,
        "POST",
        "/v2/nope/app/blobs/uploads/",
        user=None,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 401 and 'error="insufficient_scope"' in headers["www-authenticate"]


# -- the wing ---------------------------------------------------------------------------------


async def test_harbor_is_detected_from_its_api_not_its_name(
    harbor: MakeHarbor, plain_registry: RegistryProcess, pki: PKI
) -> None:
    h = harbor()
    options = RegistryOptions(ca=load_ca(str(pki.ca_pem_path)), credentials=Credentials(*ADMIN))
    harbor_side = Registry(h.host, options)
    plain = Registry(plain_registry.host, RegistryOptions())
    try:
        info = await HarborAPI(harbor_side).detect()
        assert info is not None and info.creation_restriction == "adminonly"
        assert await HarborAPI(plain).detect() is None
        api = HarborAPI(harbor_side)
        assert await api.create_project("race", public=False, storage_limit=None) is True
        # 409: someone else just made it; that is fine
        assert await api.create_project("race", public=False, storage_limit=None) is False
    finally:
        await harbor_side.close()
        await plain.close()


def test_quota_words_and_sizes() -> None:
    over = "will exceed the configured upper limit of 10.0 MiB"
    assert is_quota_refusal(PermissionDeniedError(f"denied (registry says: {over})"))
    assert is_quota_refusal(RegistryError("Quota exceeded", status=412))
    assert not is_quota_refusal(PermissionDeniedError("permission denied"))
    assert not is_quota_refusal(RegistryError("quota", status=400))
    assert parse_quota("10G") == 10 * 1024**3 and parse_quota("500MiB") == 500 * 1024**2
    assert parse_quota("-1") == -1 and parse_quota("4096") == 4096


def test_a_quota_above_harbor_s_int64_is_a_usage_error_naming_the_option() -> None:
    """Harbor's `storage_limit` is an int64 of bytes: its largest value is taken exactly (no
    float rounding on the way), one byte more, in any unit, is refused naming the option."""
    assert parse_quota(str(2**63 - 1)) == 2**63 - 1
    assert parse_quota("8388607T") == 8388607 * 1024**4
    for text in (str(2**63), "8388608T", "99999999999999999999T", "1" * 30):
        with pytest.raises(UsageError, match=r"--project-quota .*largest storage limit Harbor"):
            parse_quota(text)


def test_an_absurd_quota_is_refused_before_any_request(cli: CLI) -> None:
    out = cli("copy", "127.0.0.1:9/a/b:v1", "127.0.0.1:9/c/d:v1", "--create-projects",
              "--project-quota", "9999999999T")  # fmt: skip
    assert out.code == ExitCode.USAGE, out.err
    assert "--project-quota '9999999999T'" in out.error_line and "Traceback" not in out.err


async def test_the_emulator_takes_harbor_s_int64_storage_limit_and_no_more(
    harbor: MakeHarbor, pki: PKI
) -> None:
    h = harbor()
    options = RegistryOptions(ca=load_ca(str(pki.ca_pem_path)), credentials=Credentials(*ADMIN))
    registry = Registry(h.host, options)
    try:
        api = HarborAPI(registry)
        assert await api.detect() is not None
        assert await api.create_project("widest", public=False, storage_limit=2**63 - 1)
        assert h.projects["widest"].storage_limit == 2**63 - 1
        with pytest.raises(ProjectRefused) as refused:
            await api.create_project("wider", public=False, storage_limit=2**63)
        assert refused.value.status == 400 and "int64" in str(refused.value), refused.value
        assert "wider" not in h.projects
    finally:
        await registry.close()


async def test_a_refused_project_says_harbor_s_reason_not_only_its_name(
    harbor: MakeHarbor, pki: PKI
) -> None:
    """Harbor answers 400 to `POST /projects` for the name, the storage limit or the body:
    the message names the project and gives Harbor's reason (`errors[].message`), never
    "refused project name" for a limit it objects to, nor a credential."""
    h = harbor()
    options = RegistryOptions(ca=load_ca(str(pki.ca_pem_path)), credentials=Credentials(*ADMIN))
    registry = Registry(h.host, options)
    try:
        api = HarborAPI(registry)
        assert await api.detect() is not None
        with pytest.raises(ProjectRefused) as refused:
            await api.create_project("zero", public=False, storage_limit=0)
        said = str(refused.value)
        assert refused.value.status == 400 and "project 'zero'" in said, said
        assert said.endswith(": storage_limit must be -1 or a positive size"), said
        assert "project name" not in said, said
        with pytest.raises(ProjectRefused) as refused:
            await api.create_project("Bad_Name", public=False, storage_limit=None)
        said = str(refused.value)
        assert "project 'Bad_Name'" in said and "not in lower case" in said, said
        for secret in PASSWORDS:
            assert secret not in said
        assert not {"zero", "Bad_Name"} & set(h.projects)
    finally:
        await registry.close()


def test_text_from_elsewhere_is_shown_on_one_line_without_credentials() -> None:
    """What Harbor (or an exception) says is shown without the run's own credentials, nor
    anything after an auth scheme, on one line of at most 200 characters."""
    said = shown_text(
        "bad request from admin:Harbor12345 (Authorization: Basic YWRtaW46SGFyYm9yMTIzNDU=)\n"
        "second line",
        ["Harbor12345", ""],
    )
    assert said == "bad request from admin:*** (Authorization: Basic ***)", said
    assert len(shown_text("x" * 500)) == 203


def test_harbor_reason_from_a_body_without_errors_is_its_message_or_its_text() -> None:
    """A JSON body without `errors` (or with an empty list) gives its own `message`, else its
    text, never an empty reason."""
    assert _message(b'{"errors": [{"code": "CONFLICT", "message": "taken"}]}') == "taken"
    assert _message(b'{"errors": [{"code": "CONFLICT"}]}') == "CONFLICT"
    assert _message(b'{"message": "project quota exceeded"}') == "project quota exceeded"
    assert _message(b'{"errors": [], "message": "denied"}') == "denied"
    assert _message(b'{"errors": [], "detail": "odd"}') == '{"errors": [], "detail": "odd"}'
    assert _message(b'{"code": 500}') == '{"code": 500}'
    assert _message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert _message(b'{"message": "as Harbor12345"}', ["Harbor12345"]) == "as ***"


def test_harbor_reason_is_withheld_rather_than_garbled_by_a_short_password() -> None:
    """A password `a` masked everywhere turned Harbor's "project name" into "project n***me":
    Harbor's reason is withheld, saying why, where a short secret sits inside a word."""
    body = json.dumps({"errors": [{"code": "BAD_REQUEST", "message": "project name invalid"}]})
    assert _message(body.encode(), ["admin", "a"]) == (
        "(Harbor's reason withheld: it may quote the password)"
    )
    assert _message(body.encode(), ["admin", "Harbor12345"]) == "project name invalid"


async def test_the_wing_reaches_only_registries_the_factory_opened(tmp_path: Path) -> None:
    """Harbor's API is reached through a registry of the destination pool; any other endpoint
    (a layout, the other side's registry) is no Harbor destination."""
    dests = RegistryPool(SideSettings(side="dest"))
    sources = RegistryPool(SideSettings(side="src"))
    try:
        registry = dests.get("127.0.0.1:5000")
        assert dests.registry_of(registry) is registry
        assert registry.options.destination  # existence checks ask for pull,push
        assert dests.registry_of(sources.get("127.0.0.1:5000")) is None
        assert dests.registry_of(OCILayout(tmp_path / "oci", writable=True)) is None
    finally:
        await dests.close()
        await sources.close()


def test_project_options_need_create_projects(cli: CLI) -> None:
    out = cli("copy", "127.0.0.1:9/a/b:v1", "127.0.0.1:9/c/d:v1", "--project-quota", "10G")
    assert out.code == ExitCode.USAGE and "--create-projects" in out.error_line
    out = cli(
        "copy",
        "127.0.0.1:9/a/b:v1",
        "127.0.0.1:9/c/d:v1",
        "--create-projects",
        "--project-quota",
        "ten",
    )
    assert out.code == ExitCode.USAGE and "--project-quota 'ten'" in out.error_line


# -- copy / load ------------------------------------------------------------------------------


def test_preflight_lists_every_missing_project_with_its_command(
    cli: CLI, harbor: MakeHarbor, plain_registry: RegistryProcess, pki: PKI, tmp_path: Path
) -> None:
    h = harbor()
    seed_image(plain_registry, "hb/a", "v1", seed=141)
    seed_image(plain_registry, "hb/b", "v1", seed=142)
    plan = write_plan(
        tmp_path / "plan.yaml",
        [
            (plain_registry.ref("hb/a:v1"), f"{h.host}/tkg-one/a"),
            (plain_registry.ref("hb/b:v1"), f"{h.host}/tkg-two/b"),
        ],
    )
    out = cli("copy", "--plan", str(plan), "--preflight", *dest_args(pki))
    no_secrets(out.err)
    assert out.code == ExitCode.NOT_FOUND, out.err
    assert "2 Harbor project(s) missing: 'tkg-one', 'tkg-two'" in out.error_line
    assert "--create-projects" in out.error_line
    for name in ("tkg-one", "tkg-two"):
        line = next(ln for ln in out.err.splitlines() if f"project '{name}'" in ln)
        assert (  # trusting the CA transship was given, as it does
            f"curl --cacert {pki.ca_pem_path} -u admin -X POST https://{h.host}/api/v2.0/projects"
        ) in line
        assert f'"project_name":"{name}"' in line
    assert not h.requests("POST", r"^/v2/")  # no upload was started


def test_create_projects_then_copy_and_rerun_is_a_no_op(
    cli: CLI, harbor: MakeHarbor, plain_registry: RegistryProcess, pki: PKI
) -> None:
    h = harbor()
    seed_image(plain_registry, "hb/c", "v1", seed=143)
    src = plain_registry.ref("hb/c:v1")
    out = cli(
        "copy",
        src,
        h.ref("tkg-1-5-3/c:v1"),
        "--create-projects",
        "--project-public",
        "--project-quota",
        "64M",
        *dest_args(pki),
    )
    assert out.code == 0, out.err
    assert f"created Harbor project 'tkg-1-5-3' on {h.host}" in out.err
    project = h.projects["tkg-1-5-3"]
    assert project.public and project.storage_limit == 64 * 1024**2 and project.used > 0
    mark = len(h.records)
    out = cli("copy", src, h.ref("tkg-1-5-3/c:v1"), "--create-projects", *dest_args(pki), "-q")
    assert out.code == 0, out.err
    later = h.records[mark:]
    assert not [r for r in later if r.method == "POST"]  # exists: not created again
    v2 = [r for r in later if r.path.startswith("/v2/") and r.path != "/v2/"]
    # retention-safe: the destination's manifests are only ever HEADed, never GET (a "pull");
    # the one GET is the repository's tag list
    assert v2 and {r.method for r in v2 if not _listing(r.path)} == {"HEAD"}
    assert [r for r in v2 if r.method == "GET"] == [r for r in v2 if _listing(r.path)]


def test_robot_account_creates_projects(
    cli: CLI, harbor: MakeHarbor, plain_registry: RegistryProcess, pki: PKI
) -> None:
    h = harbor(robots_may_create=frozenset({ROBOT[0]}))
    seed_image(plain_registry, "hb/r", "v1", seed=144)
    out = cli(
        "copy",
        plain_registry.ref("hb/r:v1"),
        h.ref("robots/r:v1"),
        "--create-projects",
        *dest_args(pki, ROBOT),
    )
    no_secrets(out.err)
    assert out.code == 0, out.err
    assert h.projects["robots"].owner == ROBOT[0]


def test_user_without_the_role_gets_one_line(
    cli: CLI, harbor: MakeHarbor, plain_registry: RegistryProcess, pki: PKI
) -> None:
    h = harbor()
    seed_image(plain_registry, "hb/d", "v1", seed=145)
    out = cli(
        "copy",
        plain_registry.ref("hb/d:v1"),
        h.ref("bobs/d:v1"),
        "--create-projects",
        *dest_args(pki, BOB),
    )
    no_secrets(out.err)
    assert out.code == ExitCode.AUTH
    line = out.error_line
    assert "user 'bob'" in line and "project 'bobs'" in line
    assert "system administrator role" in line
    assert "bobs" not in h.projects
    # where everyone may create projects, a robot account still needs the permission
    h.creation_restriction = "everyone"
    out = cli(
        "copy",
        plain_registry.ref("hb/d:v1"),
        h.ref("bots/d:v1"),
        "--create-projects",
        *dest_args(pki, ROBOT),
    )
    assert out.code == ExitCode.AUTH
    assert "robot account with the 'create project' system permission" in out.error_line
    assert "restricted to admins" not in out.error_line


def test_push_into_missing_project_without_the_flag(
    cli: CLI, harbor: MakeHarbor, plain_registry: RegistryProcess, pki: PKI
) -> None:
    seed_image(plain_registry, "hb/e", "v1", seed=146)
    for auth, code in (("basic", ExitCode.NOT_FOUND), ("bearer", ExitCode.AUTH)):
        h = harbor(auth=auth)
        out = cli("copy", plain_registry.ref("hb/e:v1"), h.ref("absent/e:v1"), *dest_args(pki))
        assert out.code == code, (auth, out.err)
        assert "create the project 'absent'" in out.error_line
        assert "absent" not in h.projects


@pytest.mark.parametrize(
    ("status", "wording", "parallel"),
    [(403, "quota", 1), (412, "quota", 1), (403, "upper-limit", 16)],
)
def test_quota_refusal_is_one_line_and_stops_uploads_into_the_project(
    cli: CLI,
    harbor: MakeHarbor,
    plain_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
    status: int,
    wording: str,
    parallel: int,
) -> None:
    h = harbor(quota_status=status, quota_wording=wording)
    limit = 300_000
    h.add_project("full", storage_limit=limit)
    h.add_project("roomy")
    src = f"hbq{status}p{parallel}"
    images = [
        seed_image(plain_registry, f"{src}/i{n}", "v1", seed=150 + n, layer_sizes=(200_000,))
        for n in range(4)
    ]
    pairs = [(plain_registry.ref(f"{src}/i{n}:v1"), f"{h.host}/full/i{n}") for n in range(4)]
    pairs.append((plain_registry.ref(f"{src}/i0:v1"), f"{h.host}/roomy/i0"))
    plan = write_plan(tmp_path / "plan.yaml", pairs)
    report = tmp_path / "report.json"
    out = cli(
        "copy",
        "--plan",
        str(plan),
        "--parallel",
        str(parallel),
        "--report",
        str(report),
        *dest_args(pki),
    )
    assert out.code == ExitCode.PARTIAL, out.err
    line = out.error_line
    # the refused push would exceed the quota; Harbor's "used" need not be near the limit (the
    # uploads in flight are not in it), so it is named as Harbor's count, not as a contradiction
    assert "Harbor project 'full'" in line
    assert "refused a push that would exceed its storage quota (limit 293.0 KiB; " in line
    assert re.search(
        r"; \d+(\.\d)? (B|KiB) used as Harbor counts it, not counting uploads in "
        r"flight\)",
        line,
    ), line
    assert "is over its storage quota" not in line
    assert "3 images not copied" in line
    entries = json.loads(report.read_text())["entries"]
    by_dest = {e["destination"].split("/", 1)[1]: e["status"] for e in entries}
    # what the three images not copied need and the project does not hold yet
    held = h.projects["full"].blobs
    failed = [images[n] for n in range(4) if by_dest[f"full/i{n}:v1"] == "failed"]
    remaining = sum(b.size for i in failed for b in i.blobs if b.digest not in held)
    assert remaining > 400_000 and f"{remaining / 1024:.1f} KiB still to send" in line
    assert h.projects["full"].used <= limit
    if parallel > 1:  # which image fits first is a race; exactly one does
        assert sorted(by_dest.values()) == ["copied", "copied", "failed", "failed", "failed"]
        assert by_dest["roomy/i0:v1"] == "copied"
        return
    assert by_dest == {
        "full/i0:v1": "copied",
        "full/i1:v1": "failed",
        "full/i2:v1": "failed",
        "full/i3:v1": "failed",
        "roomy/i0:v1": "copied",
    }
    # after the refusal no new upload started in that project
    refused = next(i for i, r in enumerate(h.records) if r.status == status)
    after = [
        r
        for r in h.records[refused + 1 :]
        if r.path.startswith("/v2/full/")
        and r.method in ("POST", "PUT", "PATCH")
        and "/blobs/" in r.path
    ]
    assert after == []


# -- verify: attachments are Harbor accessories ----------------------------------------------


@pytest.mark.parametrize("referrers_api", [True, False])
def test_verify_confirms_signatures_and_referrers_are_accessories(
    cli: CLI,
    harbor: MakeHarbor,
    plain_registry: RegistryProcess,
    pki: PKI,
    tmp_path: Path,
    referrers_api: bool,
) -> None:
    from test_attachments import seed

    h = harbor(referrers_api=referrers_api)
    seeded = seed(plain_registry, f"hbacc{int(referrers_api)}")
    listing = tmp_path / "images.txt"
    listing.write_text(f"{seeded.host}/{seeded.repo('app')}:v1\n")
    plan = tmp_path / "plan.yaml"
    out = cli("plan", "images", str(listing), "--dest", f"{h.host}/signed", "-o", str(plan))
    assert out.code == 0, out.err
    out = cli("copy", "--plan", str(plan), "--create-projects", *dest_args(pki), "-q")
    assert out.code == 0, out.err
    mark = len(h.records)
    out = cli("verify", "--plan", str(plan), *dest_args(pki))
    assert out.code == 0, out.out + out.err
    asked = [r.path for r in h.records[mark:] if r.status == 200]
    if referrers_api:
        assert any("/referrers/" in p for p in asked)
        assert not any("/accessories" in p for p in asked)
    else:
        assert any(p.endswith("/accessories?page_size=100") for p in asked)
    assert "neither the referrers nor the accessories API" not in out.err
    # retention-safe: verify never GETs an image manifest at Harbor (a GET counts as a pull)
    assert not [r for r in h.records[mark:] if r.method == "GET" and "/manifests/" in r.path]
    # Harbor lost track of the SBOM referrer: present as a manifest, but not attached
    h.forget_accessory(seeded.sbom.digest)
    out = cli("verify", "--plan", str(plan), *dest_args(pki))
    assert out.code == ExitCode.INCOMPLETE, out.out + out.err
    assert "not-an-accessory" in out.out and seeded.sbom.digest[:19] in out.out


def test_load_creates_the_project_and_a_rerun_only_heads(
    cli: CLI, harbor: MakeHarbor, plain_registry: RegistryProcess, pki: PKI, tmp_path: Path
) -> None:
    h = harbor()
    seed_image(plain_registry, "hbl/app", "v1", seed=161)
    seed_index(plain_registry, "hbl/multi", "v1", seed=162)
    listing = tmp_path / "images.txt"
    listing.write_text(
        plain_registry.ref("hbl/app:v1") + "\n" + plain_registry.ref("hbl/multi:v1") + "\n"
    )
    archive = tmp_path / "usb" / "tkg"
    out = cli("save", "--images", str(listing), "-o", str(archive), "-q")
    assert out.code == 0, out.err
    out = cli(
        "load",
        str(archive),
        "--dest",
        f"{h.host}/tkg-offline",
        "--create-projects",
        *dest_args(pki),
    )
    assert out.code == 0, out.err
    assert "created Harbor project 'tkg-offline'" in out.err
    assert h.projects["tkg-offline"].used > 0
    assert not h.requests("GET", r"^/v2/.+/manifests/")  # the first load never GETs either
    mark = len(h.records)
    out = cli(
        "load",
        str(archive),
        "--dest",
        f"{h.host}/tkg-offline",
        "--create-projects",
        *dest_args(pki),
        "-q",
    )
    assert out.code == 0, out.err
    v2 = [r for r in h.records[mark:] if r.path.startswith("/v2/") and r.path != "/v2/"]
    # never a manifest GET (a pull) at Harbor: HEADs, and one tag list per repository
    assert v2 and {r.method for r in v2 if not _listing(r.path)} == {"HEAD"}
    assert [r for r in v2 if r.method == "GET"] == [r for r in v2 if _listing(r.path)]


def test_create_projects_on_a_plain_registry_is_harmless(
    cli: CLI, plain_registry: RegistryProcess, make_registry: Callable[..., RegistryProcess]
) -> None:
    seed_image(plain_registry, "hbp/app", "v1", seed=163)
    dest = make_registry("plain")
    out = cli("copy", plain_registry.ref("hbp/app:v1"), dest.ref("any/app:v1"), "--create-projects")
    assert out.code == 0, out.err
    assert f"{dest.host} is not Harbor" in out.err


def test_quota_detail_says_only_what_is_known() -> None:
    assert quota_detail(3 * 1024**2, 36147) == (
        " (limit 3.0 MiB; 35.3 KiB used as Harbor counts it, not counting uploads in flight)"
    )
    assert quota_detail(-1, 0) == " (0 B used as Harbor counts it, not counting uploads in flight)"
    assert quota_detail(1024, None) == " (limit 1.0 KiB)"
    assert quota_detail(None, None) == ""
