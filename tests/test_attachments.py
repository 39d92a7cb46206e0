"""Attached artifacts travel with their images: cosign tags, OCI 1.1 referrers, the tag schema.

The source is a real distribution 2.8 (no referrers API, so referrers are found through the tag
schema), seeded the way cosign and OCI 1.1 clients write: per planned image a `.sig` and `.att`
under `sha256-<hex>.<suffix>`, an SBOM artifact whose `subject` is the image listed by an index
at tag `sha256-<hex>`, and a signature on that SBOM (an attachment of an attachment). A second,
unplanned image in the same repository is signed too: its signature must stay behind. The
referrers API path is exercised by its parser and by a stand-in for the API call.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from clirunner import CLI
from harness.registry import RegistryProcess
from harness.seed import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Image,
    Index,
    SeedClient,
    build_image,
    build_index,
    canonical_json,
)
from harness.skopeo import Skopeo

from transship.digest import Digest
from transship.errors import ExitCode, RegistryError
from transship.manifest import Descriptor, Referrer, parse_referrers
from transship.plan.attachments import (
    attachment_phases,
    cosign_tag,
    referrers_tag,
    without_attachments_of,
)
from transship.plan.model import EntryKind, Plan, PlanEntry
from transship.remote.links import next_link
from transship.remote.registry import Registry

COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SPDX = "application/spdx+json"
DEST = "mirror"


def _descriptor(blob: Blob, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    desc = blob.descriptor()
    if annotations:
        desc["annotations"] = annotations
    return desc


def artifact(
    layers: list[tuple[Blob, dict[str, str]]],
    config: Blob,
    *,
    subject: Image | None = None,
    artifact_type: str | None = None,
) -> Image:
    """An OCI image manifest as cosign or an OCI 1.1 client writes it (no tar layers)."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = config.descriptor()
    doc["layers"] = [_descriptor(blob, notes) for blob, notes in layers]
    if subject is not None:
        doc["subject"] = subject.descriptor(with_platform=False)
    raw = canonical_json(doc)
    return Image(
        manifest=raw,
        media_type=OCI_MANIFEST,
        digest=str(Digest.of(raw)),
        config=config,
        layers=tuple(blob for blob, _ in layers),
        platform={},
    )


def cosign_config(layer: Blob) -> Blob:
    doc = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        "config": {},
    }
    return Blob.of(canonical_json(doc), OCI_CONFIG)


def signature(subject_digest: str, reference: str, seed: int) -> Image:
    """cosign's `.sig` image: a simple-signing payload layer carrying the signature."""
    payload = canonical_json(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": subject_digest},
                "type": "cosign container image signature",
            },
            "optional": {"seed": seed},
        }
    )
    layer = Blob.of(payload, COSIGN_SIMPLESIGNING)
    sig = base64.b64encode(f"signature-{seed}".encode()).decode()
    return artifact([(layer, {"dev.cosignproject.cosign/signature": sig})], cosign_config(layer))


def attestation(subject_digest: str, seed: int) -> Image:
    """cosign's `.att` image: a DSSE envelope holding an in-toto statement."""
    statement = canonical_json({"subject": [{"digest": {"sha256": subject_digest[7:]}}]})
    envelope = canonical_json(
        {
            "payloadType": "application/vnd.in-toto+json",
            "payload": base64.b64encode(statement).decode(),
            "signatures": [{"sig": f"att-{seed}"}],
        }
    )
    layer = Blob.of(envelope, DSSE_ENVELOPE)
    notes = {"predicateType": "https://slsa.dev/provenance/v0.2"}
    return artifact([(layer, notes)], cosign_config(layer))


def sbom_referrer(subject: Image, seed: int) -> Image:
    """An OCI 1.1 artifact: empty config, one SPDX layer, `subject` the image."""
    spdx = Blob.of(canonical_json({"spdxVersion": "SPDX-2.3", "name": f"sbom-{seed}"}), SPDX)
    empty = Blob.of(b"{}", OCI_EMPTY)
    return artifact([(spdx, {})], empty, subject=subject, artifact_type=SPDX)


def referrers_index(*items: Image, artifact_type: str = SPDX) -> bytes:
    """The tag-schema index listing `items` (what an OCI 1.1 client pushes without the API)."""
    manifests = []
    for item in items:
        desc = item.descriptor(with_platform=False)
        desc["artifactType"] = artifact_type
        manifests.append(desc)
    return canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def hexof(digest: str) -> str:
    return digest.split(":", 1)[1]


@dataclass
class Seeded:
    """What was pushed, by role; `attached` maps "repo:tag-or-@digest" → manifest bytes."""

    host: str
    prefix: str
    app: Image
    multi: Index
    unplanned: Image
    sbom: Image
    attached: dict[str, bytes] = field(default_factory=dict)

    def repo(self, name: str) -> str:
        return f"{self.prefix}/{name}"


def seed(reg: RegistryProcess, prefix: str) -> Seeded:
    client = SeedClient.for_registry(reg)
    app, unplanned = build_image(701, layer_sizes=(600,)), build_image(702, layer_sizes=(500,))
    multi = build_index(703, layer_sizes=(400,))
    sbom = sbom_referrer(app, 704)
    seeded = Seeded(reg.host, prefix, app, multi, unplanned, sbom)
    app_repo, multi_repo = seeded.repo("app"), seeded.repo("multi")
    client.push_image(app_repo, app, "v1")
    client.push_image(app_repo, unplanned, "v2")
    client.push_index(multi_repo, multi, "v1")

    def attach(repo: str, item: Image, tag: str | None) -> None:
        client.push_image(repo, item, tag)
        seeded.attached[f"{repo}:{tag}" if tag else f"{repo}@{item.digest}"] = item.manifest

    where = f"{reg.host}/{app_repo}"
    attach(app_repo, signature(app.digest, where, 1), f"sha256-{hexof(app.digest)}.sig")
    attach(app_repo, attestation(app.digest, 2), f"sha256-{hexof(app.digest)}.att")
    attach(app_repo, sbom, None)  # the referrer, by digest
    listing = referrers_index(sbom)
    fallback = f"sha256-{hexof(app.digest)}"
    client.push_manifest(app_repo, fallback, listing, OCI_INDEX)
    seeded.attached[f"{app_repo}:{fallback}"] = listing
    # a signature of the SBOM: an attachment of an attachment
    attach(app_repo, signature(sbom.digest, where, 3), f"sha256-{hexof(sbom.digest)}.sig")
    # cosign sign --recursive: a child of the index is signed on its own
    child = multi.images[1]
    attach(multi_repo, signature(child.digest, where, 4), f"sha256-{hexof(child.digest)}.sig")
    # the unplanned image's signature: must not travel
    client.push_image(
        app_repo, signature(unplanned.digest, where, 5), f"sha256-{hexof(unplanned.digest)}.sig"
    )
    return seeded


@pytest.fixture(scope="module")
def seeded(plain_registry: RegistryProcess) -> Seeded:
    return seed(plain_registry, "attach")


def image_list(tmp_path: Path, seeded: Seeded) -> Path:
    listing = tmp_path / "images.txt"
    listing.write_text(
        f"{seeded.host}/{seeded.repo('app')}:v1\n{seeded.host}/{seeded.repo('multi')}:v1\n"
    )
    return listing


def attachment_entries(plan: Plan) -> list[PlanEntry]:
    return [e for e in plan.entries if e.kind is EntryKind.ATTACHMENT]


# --- planning -----------------------------------------------------------------------------


def test_plan_images_finds_cosign_tags_referrers_and_their_signatures(
    cli: CLI, seeded: Seeded, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.yaml"
    mark = plain_registry.log_offset()
    out = cli(
        "plan",
        "images",
        str(image_list(tmp_path, seeded)),
        "--dest",
        f"harbor.local/{DEST}",
        "-o",
        str(plan_file),
    )
    assert out.code == 0, out.err
    plan = Plan.from_yaml(plan_file.read_text(), str(plan_file))
    app, sbom, child = seeded.app, seeded.sbom, seeded.multi.images[1]
    found = {
        (e.destination.removeprefix("harbor.local/"), e.tags, str(e.source_digest), str(e.subject))
        for e in attachment_entries(plan)
    }
    app_dest, multi_dest = f"{DEST}/{seeded.repo('app')}", f"{DEST}/{seeded.repo('multi')}"
    pushed = seeded.attached

    def digest_of(key: str) -> str:
        return str(Digest.of(pushed[key]))

    app_repo, multi_repo = seeded.repo("app"), seeded.repo("multi")
    assert found == {
        (
            app_dest,
            (f"sha256-{hexof(app.digest)}.att",),
            digest_of(f"{app_repo}:sha256-{hexof(app.digest)}.att"),
            app.digest,
        ),
        (
            app_dest,
            (f"sha256-{hexof(app.digest)}.sig",),
            digest_of(f"{app_repo}:sha256-{hexof(app.digest)}.sig"),
            app.digest,
        ),
        (app_dest, (), sbom.digest, app.digest),  # the referrer, by digest
        (
            app_dest,
            (f"sha256-{hexof(app.digest)}",),  # and the tag-schema index that lists it
            digest_of(f"{app_repo}:sha256-{hexof(app.digest)}"),
            app.digest,
        ),
        (
            app_dest,
            (f"sha256-{hexof(sbom.digest)}.sig",),  # one level further
            digest_of(f"{app_repo}:sha256-{hexof(sbom.digest)}.sig"),
            sbom.digest,
        ),
        (
            multi_dest,
            (f"sha256-{hexof(child.digest)}.sig",),  # an index child's signature
            digest_of(f"{multi_repo}:sha256-{hexof(child.digest)}.sig"),
            child.digest,
        ),
    }
    unplanned = f"sha256-{hexof(seeded.unplanned.digest)}.sig"
    assert all(unplanned not in e.tags for e in plan.entries)
    origins = {o for e in attachment_entries(plan) for o in e.origins}
    assert any(o.startswith("cosign signature of ") for o in origins)
    assert any(o.startswith(f"referrer ({SPDX}) of ") for o in origins)
    # counted: in the plan's totals and in the summary
    assert yaml.safe_load(plan_file.read_text())["totals"]["attachments"] == 6
    assert plan.totals.attachments == 6
    assert any(ln.split() == ["│", "attachments", "│", "6", "│"] for ln in out.err.splitlines())
    # the file round-trips, subjects included
    again = Plan.from_yaml(plan.to_yaml(), "again")
    assert again.entries == plan.entries
    # cheap: one tag list per source repository, whatever the number of manifests
    listings = plain_registry.requests("GET", r"/tags/list", since=mark)
    assert sorted(e.path.split("/tags/")[0] for e in listings) == [
        f"/v2/{app_repo}",
        f"/v2/{multi_repo}",
    ]
    # distribution 2.8 has no referrers API: asked once, then never again on that host
    assert len(plain_registry.requests("GET", r"/referrers/", since=mark)) == 1


def test_no_attachments_plans_none(cli: CLI, seeded: Seeded, tmp_path: Path) -> None:
    out = cli(
        "plan",
        "images",
        str(image_list(tmp_path, seeded)),
        "--dest",
        f"harbor.local/{DEST}",
        "--no-attachments",
        "--format",
        "json",
    )
    assert out.code == 0, out.err
    doc = json.loads(out.out)
    assert {e["kind"] for e in doc["entries"]} == {"image", "index"}
    assert "attachments" not in doc["totals"]
    assert any("attachments" in ln and "not looked for" in ln for ln in out.err.splitlines())


def test_copy_plan_lands_attachments_beside_their_images(
    cli: CLI,
    seeded: Seeded,
    plain_registry: RegistryProcess,
    make_registry: Any,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    dest = make_registry("plain")
    plan_file = tmp_path / "plan.yaml"
    out = cli(
        "plan",
        "images",
        str(image_list(tmp_path, seeded)),
        "--dest",
        f"{dest.host}/{DEST}",
        "-o",
        str(plan_file),
        "-q",
    )
    assert out.code == 0, out.err
    copied = cli("copy", "--plan", str(plan_file), "-q")
    assert copied.code == 0, copied.err
    for key, raw in seeded.attached.items():
        assert skopeo(dest, f"{DEST}/{key}") == raw, key  # same tag or digest, same bytes
    assert skopeo(dest, f"{DEST}/{seeded.repo('app')}:v1") == seeded.app.manifest
    dest_tags = SeedClient.for_registry(dest).list_tags(f"{DEST}/{seeded.repo('app')}")
    assert f"sha256-{hexof(seeded.unplanned.digest)}.sig" not in dest_tags
    assert "v2" not in dest_tags
    checked = cli("verify", "--plan", str(plan_file))  # every attachment counts as planned
    assert checked.code == 0, checked.err + checked.out


def test_a_single_copy_brings_the_image_attachments_too(
    cli: CLI, seeded: Seeded, make_registry: Any, skopeo: Skopeo
) -> None:
    """`copy SOURCE DESTINATION` is resolved as a list is: the signature, attestation and
    referrers of the image travel with it (as `--help` says), unless `--no-attachments`."""
    dest = make_registry("plain")
    app = seeded.repo("app")
    out = cli("copy", f"{seeded.host}/{app}:v1", f"{dest.host}/one/app:v1", "-q")
    assert out.code == 0, out.err
    assert skopeo(dest, "one/app:v1") == seeded.app.manifest
    for key, raw in seeded.attached.items():
        if key.startswith(f"{app}:") or key.startswith(f"{app}@"):
            assert skopeo(dest, f"one/app{key[len(app) :]}") == raw, key
    out = cli("copy", f"{seeded.host}/{app}:v1", f"{dest.host}/bare/app:v1", "--no-attachments",
              "-q")  # fmt: skip
    assert out.code == 0, out.err
    assert SeedClient.for_registry(dest).list_tags("bare/app") == ["v1"]


def test_verify_of_a_list_checks_the_attachments_copy_brought(
    cli: CLI, seeded: Seeded, make_registry: Any, tmp_path: Path
) -> None:
    """`verify --images` resolves the list as `copy --images` does: a destination without the
    signatures, attestations and referrers is incomplete, unless `--no-attachments` says so."""
    dest = make_registry("plain")
    listing = str(image_list(tmp_path, seeded))
    where = ("--dest", f"{dest.host}/{DEST}")
    bare = cli("copy", "--images", listing, *where, "--no-attachments", "-q")
    assert bare.code == 0, bare.err
    checked = cli("verify", "--images", listing, *where)
    assert checked.code == ExitCode.INCOMPLETE, checked.err + checked.out
    assert "missing" in checked.out, checked.out
    assert cli("verify", "--images", listing, *where, "--no-attachments", "-q").code == 0
    assert cli("verify", "--images", listing, *where, "--no-resolve", "-q").code == 0
    full = cli("copy", "--images", listing, *where, "-q")
    assert full.code == 0, full.err
    checked = cli("verify", "--images", listing, *where, "--report", str(tmp_path / "r.json"))
    assert checked.code == 0, checked.err + checked.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert sum(1 for c in report["entries"] if c["kind"] == "attachment") == len(seeded.attached)


# --- failures -----------------------------------------------------------------------------


def test_a_failed_lookup_stops_the_plan_or_is_a_gap(
    cli: CLI, seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(registry: object, repository: str, digest: Digest) -> None:
        raise RegistryError(f"referrers of {repository}: registry answered 418", status=418)

    monkeypatch.setattr(Registry, "list_referrers", refused)
    listing = image_list(tmp_path, seeded)
    out = cli("plan", "images", str(listing), "--dest", f"harbor.local/{DEST}")
    assert out.code == 8
    assert "looking for attachments of" in out.error_line
    assert "--no-attachments" in out.error_line
    kept = cli("plan", "images", str(listing), "--dest", f"harbor.local/{DEST}", "--keep-going")
    assert kept.code == 2, kept.err
    plan = Plan.from_yaml(kept.out, "stdout")
    assert {e.kind for e in plan.entries} == {EntryKind.IMAGE, EntryKind.INDEX}
    assert plan.gaps and all("attachments not looked for" in g.reason for g in plan.gaps)


# --- the referrers API --------------------------------------------------------------------


def test_plan_takes_referrers_from_the_api_and_merges_the_tag_schema_list(
    cli: CLI,
    seeded: Seeded,
    plain_registry: RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry with the API: a referrer only it lists is planned by digest, once; one the
    tag-schema index lists as well is not planned twice."""
    extra = sbom_referrer(seeded.app, 705)
    SeedClient.for_registry(plain_registry).push_image(seeded.repo("app"), extra)
    sig_tag = f"{seeded.repo('app')}:sha256-{hexof(seeded.app.digest)}.sig"
    sig = Image(
        seeded.attached[sig_tag],
        OCI_MANIFEST,
        str(Digest.of(seeded.attached[sig_tag])),
        seeded.sbom.config,
        (),
        {},
    )  # Harbor lists cosign's images as referrers too
    api_answer = json.loads(referrers_index(seeded.sbom, extra, sig))

    async def api(registry: object, repository: str, digest: Digest) -> tuple[Referrer, ...]:
        if str(digest) != seeded.app.digest:
            return ()
        return parse_referrers(json.dumps(api_answer).encode(), "api")

    monkeypatch.setattr(Registry, "list_referrers", api)
    out = cli(
        "plan",
        "images",
        str(image_list(tmp_path, seeded)),
        "--dest",
        f"harbor.local/{DEST}",
        "--format",
        "json",
        "-q",
    )
    assert out.code == 0, out.err
    plan = Plan.from_yaml(out.out, "stdout")
    by_digest = [str(e.source_digest) for e in attachment_entries(plan) if not e.tags]
    assert sorted(by_digest) == sorted([seeded.sbom.digest, extra.digest])
    assert [str(e.source_digest) for e in attachment_entries(plan)].count(sig.digest) == 1


def test_a_digest_tag_naming_the_manifest_itself_is_not_a_referrers_list(
    cli: CLI, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    """Some mirrors tag a manifest `sha256-<its own hex>`; an index so tagged lists platforms,
    not referrers."""
    index = build_index(706, layer_sizes=(300,))
    client = SeedClient.for_registry(plain_registry)
    client.push_index("attach/self", index, "v1")
    client.push_manifest("attach/self", f"sha256-{hexof(index.digest)}", index.manifest, OCI_INDEX)
    listing = tmp_path / "images.txt"
    listing.write_text(f"{plain_registry.host}/attach/self:v1\n")
    out = cli("plan", "images", str(listing), "--dest", "harbor.local/m", "--format", "json")
    assert out.code == 0, out.err
    assert [e["kind"] for e in json.loads(out.out)["entries"]] == ["index"]
    assert "warning" not in out.err


def test_parse_referrers_reads_descriptors_and_artifact_types() -> None:
    sig = "sha256:" + "a" * 64
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sig,
                    "size": 512,
                    "artifactType": SPDX,
                    "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
                },
                {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 7},
            ],
        }
    ).encode()
    found = parse_referrers(raw, "test")
    assert [r.artifact_type for r in found] == [SPDX, None]
    assert found[0].descriptor == Descriptor(
        OCI_MANIFEST,
        Digest.parse(sig),
        512,
        annotations=(("org.opencontainers.image.created", "2024-01-01T00:00:00Z"),),
    )
    assert parse_referrers(b'{"schemaVersion": 2, "manifests": []}', "empty") == ()
    for bad in (b"not json", b"[]", b'{"manifests": {}}', b'{"manifests": [{"size": 1}]}'):
        with pytest.raises(Exception, match="test"):
            parse_referrers(bad, "test")


def test_next_link_follows_the_link_header() -> None:
    here = "https://r.example/v2/a/referrers/sha256:x"
    link = '</v2/a/referrers/sha256:x?n=2&last=b>; rel="next"'
    assert next_link(link, here) == "https://r.example/v2/a/referrers/sha256:x?n=2&last=b"
    assert next_link(None, here) is None
    assert next_link('</x>; rel="prev"', here) is None


def test_distribution_has_no_referrers_api(seeded: Seeded) -> None:
    async def ask() -> object:
        registry = Registry(seeded.host)
        try:
            return await registry.list_referrers(
                seeded.repo("app"), Digest.parse(seeded.app.digest)
            )
        finally:
            await registry.close()

    assert asyncio.run(ask()) is None


# --- order and filtering ------------------------------------------------------------------


def _attachment(source: str, subject: Digest, tags: tuple[str, ...], own: Digest) -> PlanEntry:
    return PlanEntry.create(
        source,
        "dest.local/app",
        kind=EntryKind.ATTACHMENT,
        tags=tags,
        source_digest=own,
        subject=subject,
    )


def test_attachment_phases_put_attachments_of_attachments_and_lists_last() -> None:
    image, sbom, sig, sbom_sig, listing = (Digest.of(bytes([n])) for n in range(5))
    image_entry = PlanEntry.create(f"src.local/app@{image}", "dest.local/app")
    sig_entry = _attachment(
        f"src.local/app:{cosign_tag(image, 'sig')}", image, (cosign_tag(image, "sig"),), sig
    )
    sbom_entry = _attachment(f"src.local/app@{sbom}", image, (), sbom)
    sbom_sig_entry = _attachment(
        f"src.local/app:{cosign_tag(sbom, 'sig')}", sbom, (cosign_tag(sbom, "sig"),), sbom_sig
    )
    list_entry = _attachment(
        f"src.local/app:{referrers_tag(image)}", image, (referrers_tag(image),), listing
    )
    plan = Plan((image_entry, sig_entry, sbom_entry, sbom_sig_entry, list_entry))
    groups = attachment_phases(plan.entries)
    assert [{e.source_digest for e in g} for g in groups] == [{sig, sbom}, {sbom_sig}, {listing}]
    # a subject left out takes its attachments, and theirs, along
    kept = without_attachments_of(plan.entries, [image_entry])
    assert [e.source_digest for e in kept] == [image]


def test_attachment_entries_round_trip_and_subject_belongs_to_attachments() -> None:
    subject = Digest.of(b"subject")
    entry = _attachment(
        f"src.local/app:{cosign_tag(subject, 'sig')}",
        subject,
        (cosign_tag(subject, "sig"),),
        Digest.of(b"sig"),
    )
    plan = Plan((entry,))
    text = plan.to_yaml()
    assert f"subject: {subject}" in text and "kind: attachment" in text
    assert Plan.from_yaml(text, "plan.yaml").entries == plan.entries
    wrong = text.replace("kind: attachment", "kind: image")
    with pytest.raises(Exception, match="only 'attachment' entries have a subject"):
        Plan.from_yaml(wrong, "plan.yaml")
