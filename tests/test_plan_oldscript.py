"""Reading the vendor scripts' output, checked against a re-enactment of gen-publish-images.sh.

The generators below emit lines exactly the way vmware-tanzu/tanzu-framework
`hack/gen-publish-images.sh` (main line, commit f7f46622, with
TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE set) and `gen-publish-images-totar.sh` /
`-fromtar.sh` print them: per BOM the BOM image then every component image in key order, with
duplicates; `-b` for the bundle components. They read the fixture BOMs with plain yaml so that
they do not share code with the parser under test. For 1.5.3 the walk is tkg-bom v1.5.3, every
TKR named in tkr-compatibility v13 (standing in for the registry's tkr-bom tag list, in tag
order), tkr-compatibility v13 and tkg-compatibility v7.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from transship.plan import (
    EntryKind,
    Plan,
    PlanError,
)
from transship.tkg.bom import (
    TkgCompatibility,
    TkrCompatibility,
    parse_bom,
    parse_compatibility,
    plan_from_boms,
    tkr_bom_filename,
)
from transship.tkg.script import (
    entries_from_old_script,
    load_old_script,
    plan_from_old_script,
)

DATA = Path(__file__).parent / "data" / "tkg"
SRC = "projects.registry.vmware.com/tkg"
DST = "harbor.local/tkg-1-5-3"
CA = " --registry-ca-cert-path /tmp/cacrtbase64d.crt"
TKG_BUNDLES = {"tkg-standard-packages", "standalone-plugins-package",
               "tanzu-framework-management-packages"}  # fmt: skip
TKR_BUNDLES = {"tkg-core-packages"}


def read_yaml(name: str) -> Any:
    return yaml.safe_load((DATA / name).read_text())


def walk_tkr_tags() -> list[str]:
    doc = read_yaml("tkr-compatibility-v13-v1.5.3.yaml")
    versions = {
        v for row in doc["managementClusterVersions"] for v in row["supportedKubernetesVersions"]
    }
    return sorted(v.replace("+", "_") for v in versions)  # as `imgpkg tag list` would list them


def component_images(doc: Any, bundles: set[str]) -> list[tuple[str, str]]:
    """(flags, imagePath:tag) in the order `yq` yields them."""
    out = []
    for comp, entries in doc["components"].items():
        flags = "-b" if comp in bundles else "-i"
        for entry in entries:
            for image in (entry.get("images") or {}).values():
                out.append((flags, f"{image['imagePath']}:{image['tag']}"))
    return out


@cache
def walk() -> tuple[tuple[str, str, str], ...]:
    """(comment, flags, imagePath:tag) for every copy the script makes, in order."""
    steps: list[tuple[str, str, str]] = []
    bom = read_yaml("tkg-bom-v1.5.3.yaml")
    steps.append(("Processing TKG BOM file tkg-bom-v1.5.3.yaml", "-i", "tkg-bom:v1.5.3"))
    steps += [("", flags, image) for flags, image in component_images(bom, TKG_BUNDLES)]
    for tag in walk_tkr_tags():
        file = f"tkr-bom-{tag.replace('_', '+')}.yaml"  # the script's ${imageTag//_/+}
        steps.append((f"Processing TKR BOM file {file}", "-i", f"tkr-bom:{tag}"))
        steps += [("", f, image) for f, image in component_images(read_yaml(file), TKR_BUNDLES)]
    steps.append(("Processing TKR compatibility image", "-i", "tkr-compatibility:v13"))
    steps.append(("Processing TKG compatibility image", "-i", "tkg-compatibility:v7"))
    return tuple(steps)


def gen_publish_images() -> str:
    """The to-repo script, as printed to stdout."""
    lines = [
        "set -euo pipefail",
        "# Note that yq must be version above or equal to version 4.9.2 and below version 5..",
    ]
    for comment, flags, image in walk():
        if comment:
            lines.append(f"# {comment}")
        path = image.split(":")[0]
        lines += ["", f"imgpkg copy {flags} {SRC}/{image} --to-repo {DST}/{path}{CA}"]
    return "\n".join(lines) + "\n"


def tar_name(image: str) -> str:
    return image.replace("/", "-").replace(":", "-") + ".tar"


def gen_publish_images_totar() -> str:
    lines = ["set -euo pipefail"]
    for comment, flags, image in walk():
        if comment:
            lines.append(f"# {comment}")
        lines += ["", f"imgpkg copy {flags} {SRC}/{image} --to-tar {tar_name(image)}"]
    return "\n".join(lines) + "\n"


def gen_publish_images_fromtar() -> str:
    lines = [
        "set -eo pipefail",
        'if [ -n "$TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE" ]; then',
        "  echo $TKG_CUSTOM_IMAGE_REPOSITORY_CA_CERTIFICATE > /tmp/cacrtbase64",
        "  base64 -d /tmp/cacrtbase64 > /tmp/cacrtbase64d.crt",
        "fi",
    ]
    for comment, _, image in walk():
        if comment:
            lines.append(f"# {comment}")
        path = image.split(":")[0]
        lines += ["", f"imgpkg copy --tar {tar_name(image)} --to-repo {DST}/{path}{CA}"]
    return "\n".join(lines) + "\n"


@cache
def boms_plan() -> Plan:
    """plan_from_boms for the same walk."""
    tkr_doc = parse_compatibility(
        (DATA / "tkr-compatibility-v13-v1.5.3.yaml").read_text(), "tkr-compat"
    )
    tkg_doc = parse_compatibility((DATA / "tkg-compatibility-v1.5.3.yaml").read_text(), "c")
    assert isinstance(tkr_doc, TkrCompatibility) and isinstance(tkg_doc, TkgCompatibility)
    tkrs = [
        parse_bom((DATA / tkr_bom_filename(v)).read_text(), tkr_bom_filename(v))
        for v in tkr_doc.all_tkrs()
    ]
    tkg = parse_bom((DATA / "tkg-bom-v1.5.3.yaml").read_text(), "tkg-bom-v1.5.3.yaml")
    return plan_from_boms(tkg, tkrs, [tkr_doc, tkg_doc], DST)


def facts(plan: Plan) -> set[tuple[str, str, tuple[str, ...], EntryKind]]:
    return {(e.source, e.destination, e.tags, e.kind) for e in plan.entries}


class TestVendorScriptOutput:
    def test_generated_script_has_the_vendor_line_count(self) -> None:
        lines = [x for x in gen_publish_images().splitlines() if x.startswith("imgpkg")]
        assert len(lines) == 1 + 94 + 35 + 1345 + 2  # docs/tkg-bom-format.md §9
        assert len(set(lines)) == 476

    def test_to_repo_script_parses_to_the_boms_plan(self) -> None:
        plan = plan_from_old_script(gen_publish_images(), "publish-images.sh")
        assert plan.totals.entries == 476
        assert plan.totals.bundles == 71
        assert facts(plan) == facts(boms_plan())

    def test_duplicates_keep_every_line_as_origin(self) -> None:
        plan = plan_from_old_script(gen_publish_images(), "publish-images.sh")
        pause = next(e for e in plan.entries if e.source == f"{SRC}/pause:3.5")
        assert len(pause.origins) > 1
        assert all(o.startswith("publish-images.sh:") for o in pause.origins)

    def test_tar_round_trip_scripts_parse_to_the_boms_plan(self) -> None:
        text = gen_publish_images_totar() + gen_publish_images_fromtar()
        plan = plan_from_old_script(text, "tar-scripts.sh")
        assert facts(plan) == facts(boms_plan())
        entry = next(
            e for e in plan.entries if e.source == f"{SRC}/cluster-api/mic:v1.8.0_vmware.1"
        )
        assert entry.origins[0].startswith("tar-scripts.sh:")
        assert len(entry.origins) == 2  # the export line and the import line

    def test_download_half_alone_needs_a_destination_prefix(self) -> None:
        with pytest.raises(PlanError, match=r"^totar.sh:\d+: .* only goes to tkg-bom-v1.5.3.tar"):
            plan_from_old_script(gen_publish_images_totar(), "totar.sh")
        plan = plan_from_old_script(gen_publish_images_totar(), "totar.sh", DST, SRC)
        assert facts(plan) == facts(boms_plan())

    def test_upload_half_alone_is_an_error(self) -> None:
        with pytest.raises(PlanError, match=r"^fromtar.sh:\d+: reads tkg-bom-v1.5.3.tar but no"):
            plan_from_old_script(gen_publish_images_fromtar(), "fromtar.sh")


HASH = "e" * 64


class TestLines:
    def test_variants(self) -> None:
        text = "\n".join(
            [
                "#!/bin/bash",
                "set -euo pipefail",
                "   imgpkg copy -i r.example/a:v1 --to-repo h.local/a",
                "./imgpkg copy --image r.example/b:v2 --to-repo=h.local/b --concurrency 3",
                "imgpkg copy --bundle=r.example/pkg/repo:v3 --to-repo h.local/pkg/repo -y",
                f"/usr/local/bin/imgpkg copy -i r.example/c@sha256:{HASH} --to-repo h.local/c",
                "imgpkg copy -i r.example/x/tkr-bom:v1_x --to-repo h.local/x/tkr-bom  # meta",
                "imgpkg copy -i r.example/a:v1 --to-repo h.local/a --registry-verify-certs=false",
                "",
            ]
        )
        entries = entries_from_old_script(text, "s.sh")
        got = [(e.source, e.destination, e.tags, e.kind.value) for e in entries]
        assert got == [
            ("r.example/a:v1", "h.local/a", ("v1",), "image"),
            ("r.example/b:v2", "h.local/b", ("v2",), "image"),
            ("r.example/pkg/repo:v3", "h.local/pkg/repo", ("v3",), "bundle"),
            (f"r.example/c@sha256:{HASH}", "h.local/c", (), "image"),
            ("r.example/x/tkr-bom:v1_x", "h.local/x/tkr-bom", ("v1_x",), "metadata"),
            ("r.example/a:v1", "h.local/a", ("v1",), "image"),
        ]
        assert entries[0].origins == ("s.sh:3",)
        assert plan_from_old_script(text, "s.sh").totals.entries == 5

    def test_unpaired_export_follows_the_source_path_without_source_prefix(self) -> None:
        text = "imgpkg copy -i r.example/tkg/x/y:v1 --to-tar x.tar\n"
        (entry,) = entries_from_old_script(text, "s.sh", "h.local/p")
        assert entry.destination == "h.local/p/tkg/x/y"
        (entry,) = entries_from_old_script(text, "s.sh", "h.local/p", "r.example/tkg/")
        assert entry.destination == "h.local/p/x/y"

    def test_import_pairs_by_file_name_when_directories_differ(self) -> None:
        text = (
            "imgpkg copy -i r.example/a:v1 --to-tar /download/a-v1.tar\n"
            "imgpkg copy --tar /media/usb/a-v1.tar --to-repo h.local/a\n"
        )
        (entry,) = entries_from_old_script(text, "s.sh")
        assert (entry.source, entry.destination) == ("r.example/a:v1", "h.local/a")

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ("docker pull r.example/a:v1", r"^s.sh:1: not an 'imgpkg copy' line"),
            ("imgpkg pull -i r.example/a:v1 -o x", r"^s.sh:1: only 'imgpkg copy' is understood"),
            ("imgpkg copy -i r.example/a:v1", "needs one source .* and one destination"),
            ("imgpkg copy -i r.example/a:v1 --to-repo", r"--to-repo needs a value"),
            ("imgpkg copy -i a.example/a:v1 -i a.example/b:v1 --to-repo h.local/a", "given twice"),
            ("imgpkg copy -i r.example/a:v1 --to-repo h.local/a --frobnicate 1", "unknown imgpkg"),
            ("imgpkg copy --lock images.yml --to-repo h.local/a", "--lock sources are not"),
            ("imgpkg copy -i r.example/a:v1 --to-repo h.local/a:v1", "must be a repository"),
            ("imgpkg copy -i r.example/A:v1 --to-repo h.local/a", r"^s.sh:1: invalid image ref"),
            ("imgpkg copy -i 'r.example/a:v1 --to-repo h.local/a", "fix the quoting"),
            ("imgpkg copy --tar a.tar --to-tar b.tar", "copies nothing"),
            ("imgpkg copy -i r.example/a:v1 stray --to-repo h.local/a", "unexpected argument"),
        ],
    )
    def test_errors_name_file_and_line(self, line: str, message: str) -> None:
        with pytest.raises(PlanError, match=message) as info:
            entries_from_old_script(line + "\n", "s.sh")
        assert str(info.value).startswith("s.sh:1: ")
        assert "\n" not in str(info.value)

    def test_two_images_into_one_archive_is_an_error(self) -> None:
        text = (
            "imgpkg copy -i r.example/a/b:c-d --to-tar a-b-c-d.tar\n"
            "imgpkg copy -i r.example/a/b-c:d --to-tar a-b-c-d.tar\n"
        )
        with pytest.raises(PlanError, match=r"^s.sh:2: writes a-b-c-d.tar, which s.sh:1"):
            entries_from_old_script(text, "s.sh", "h.local")

    @pytest.mark.parametrize(
        ("text", "dest_prefix"),
        [
            # one line: "only goes to app.tar" quoted the source as written
            ("imgpkg copy -i bob:S3cret@reg.example/tkg/app:v1 --to-tar app.tar\n", None),
            # two lines into one archive: "which s.sh:1 already writes with SOURCE"
            (
                "imgpkg copy -i bob:S3cret@reg.example/tkg/app:v1 --to-tar app.tar\n"
                "imgpkg copy -i reg.example/tkg/other:v1 --to-tar app.tar\n",
                "h.local",
            ),
            (
                "imgpkg copy -i reg.example/tkg/other:v1 --to-tar app.tar\n"
                "imgpkg copy -b bob:S3cret@reg.example/tkg/app:v1 --to-tar app.tar\n",
                "h.local",
            ),
            ("imgpkg copy --tar app.tar --to-repo bob:S3cret@h.local/tkg/app\n", None),
        ],
    )
    def test_a_password_in_a_line_is_refused_masked(
        self, text: str, dest_prefix: str | None
    ) -> None:
        with pytest.raises(PlanError, match="holds credentials") as info:
            entries_from_old_script(text, "s.sh", dest_prefix)
        assert "S3cret" not in str(info.value) and "bob" not in str(info.value)
        assert "***@" in str(info.value) and str(info.value).startswith("s.sh:")

    def test_load_from_file(self, tmp_path: Path) -> None:
        path = tmp_path / "publish-images.sh"
        path.write_text(gen_publish_images())
        assert load_old_script(path).totals.entries == 476


@pytest.mark.parametrize(
    "line",
    [
        "imgpkg pull -i r.example/a:v1 --registry-password S3cret -o out",
        "imgpkg pull -i r.example/a:v1 --registry-token=S3cret -o out",
        "IMGPKG_REGISTRY_PASSWORD=S3cret imgpkg copy -i r.example/a:v1 --to-repo h.local/a",
        "skopeo copy docker://bob:S3cret@r.example/a:v1 docker://h.local/a",
        "imgpkg copy -i r.example/a:v1 --to-repo h.local/a bob:S3cret@r.example/b",
    ],
)
def test_a_line_quoted_in_an_error_never_shows_a_password(line: str) -> None:
    """Lines that are no `imgpkg copy` (or carry a stray word) are quoted back so the operator
    sees what was read; a password or token in them is masked."""
    with pytest.raises(PlanError) as info:
        entries_from_old_script(line + "\n", "s.sh", "h.local/p")
    message = str(info.value)
    assert message.startswith("s.sh:1: ") and "S3cret" not in message, message
    assert "***" in message, message
