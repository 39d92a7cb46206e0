"""TKG BOM and compatibility parsing, and the release plans built from the real 1.5.3 files.

Counting rule (docs/tkg-bom-format.md §9-10): a reference is `<imageRepository>/<imagePath>:<tag>`
of every `components.*[].images.*` entry of the BOMs in scope, unique by (repository, tag); a
reference is a bundle when any BOM lists it under a bundle component (vendor script rule); the
BOM and compatibility images themselves (`tkg-bom:<v>`, `tkr-bom:<tkr_>`, `tkr-compatibility:vN`,
`tkg-compatibility:vN`) are added, and `tkg-bom:v1.5.3` is already a component of its own BOM.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from transship.errors import UsageError
from transship.plan import (
    EntryKind,
    Plan,
    PlanError,
)
from transship.tkg.bom import (
    Bom,
    Compatibility,
    TkgCompatibility,
    TkrCompatibility,
    highest_v_tag,
    load_bom,
    parse_bom,
    parse_compatibility,
    plan_from_boms,
    tkr_bom_filename,
    tkr_bom_tag,
)

DATA = Path(__file__).parent / "data" / "tkg"
REGISTRY = "projects.registry.vmware.com/tkg"
DEST = "harbor.local/tkg"
CREATED = "2024-05-01T12:00:00Z"


@cache
def bom(name: str) -> Bom:
    return parse_bom((DATA / name).read_text(), name)


def tkr_compat() -> TkrCompatibility:
    name = "tkr-compatibility-v13-v1.5.3.yaml"
    doc = parse_compatibility((DATA / name).read_text(), name)
    assert isinstance(doc, TkrCompatibility)
    return doc


def tkg_compat() -> TkgCompatibility:
    name = "tkg-compatibility-v1.5.3.yaml"
    doc = parse_compatibility((DATA / name).read_text(), name)
    assert isinstance(doc, TkgCompatibility)
    return doc


def release_plan(tkr_versions: tuple[str, ...], dest: str = DEST) -> Plan:
    tkrs = [bom(tkr_bom_filename(v)) for v in tkr_versions]
    compat: list[Compatibility] = [tkr_compat(), tkg_compat()]
    return plan_from_boms(bom("tkg-bom-v1.5.3.yaml"), tkrs, compat, dest, created=CREATED)


def plan_1_5_3() -> Plan:
    """The TKG 1.5.3 release set: its BOM, its 3 TKRs, tkr-compatibility v13, tkg-compat v7."""
    return release_plan(tkr_compat().tkrs_for("v1.5.3"))


def plan_old_walk() -> Plan:
    """What gen-publish-images.sh walks for 1.5.3: every TKR named in tkr-compatibility v13."""
    return release_plan(tkr_compat().all_tkrs())


class TestBom:
    def test_tkg_bom_1_5_3(self) -> None:
        b = bom("tkg-bom-v1.5.3.yaml")
        assert (b.kind, b.version, b.tag) == ("tkg", "v1.5.3", "v1.5.3")
        assert b.image_repository == REGISTRY
        assert b.default_tkr == "v1.22.8+vmware.1-tkg.1"
        assert (b.tkr_bom_path, b.tkr_compatibility_path) == ("tkr-bom", "tkr-compatibility")
        assert len(b.images) == 94
        assert len({i.reference for i in b.images}) == 94
        assert b.non_registry == ()

    def test_images_carry_component_index_key_and_full_reference(self) -> None:
        images = bom("tkg-bom-v1.5.3.yaml").images
        contour = [i for i in images if i.component == "contour"]
        assert [(i.index, i.key, i.reference) for i in contour] == [
            (0, "contourImage", f"{REGISTRY}/contour:v1.17.2_vmware.1"),
            (1, "contourImage", f"{REGISTRY}/contour:v1.18.2_vmware.1"),
        ]
        assert contour[1].origin == "tkg-bom-v1.5.3.yaml components.contour[1].images.contourImage"

    def test_dotted_keys_are_quoted_in_yaml_paths(self) -> None:
        images = bom("tkg-bom-v1.5.3.yaml").images
        plugins = next(i for i in images if i.component == "standalone-plugins-package")
        assert plugins.origin.endswith(
            'components.standalone-plugins-package[0].images["standalone-plugins.tanzu.vmware.com"]'
        )

    def test_bundle_rule_by_component_name(self) -> None:
        tkg = {i.image_path for i in bom("tkg-bom-v1.5.3.yaml").images if i.bundle_hint}
        assert tkg == {
            "packages/standard/repo",
            "packages/management/repo",
            "packages/standalone/standalone-plugins",
        }
        tkr = bom("tkr-bom-v1.22.8+vmware.1-tkg.1.yaml")
        assert {i.component for i in tkr.images if i.bundle_hint} == {"tkg-core-packages"}
        byoh = next(i for i in bom("tkg-bom-v1.5.3.yaml").images if i.key == "byohImgpkgBundle")
        assert not byoh.bundle_hint  # named like a bundle; the script copies it with -i

    @pytest.mark.parametrize(
        ("version", "count"),
        [
            ("v1.22.8+vmware.1-tkg.1", 48),
            ("v1.21.11+vmware.1-tkg.1", 48),
            ("v1.20.15+vmware.1-tkg.1", 43),
        ],
    )
    def test_tkr_boms_of_1_5_3(self, version: str, count: int) -> None:
        b = bom(tkr_bom_filename(version))
        assert (b.kind, b.version, b.tag) == ("tkr", version, tkr_bom_tag(version))
        assert len(b.images) == count
        assert b.default_tkr is None

    def test_quoted_numeric_tags_stay_strings(self) -> None:
        images = bom("tkr-bom-v1.22.8+vmware.1-tkg.1.yaml").images
        assert {i.tag for i in images if i.image_path == "pause"} >= {"3.5", "3.5-windows-amd64"}

    def test_non_registry_artifacts_are_collected(self) -> None:
        b = bom("tkr-bom-v1.22.8+vmware.1-tkg.1.yaml")
        kinds = [a.kind for a in b.non_registry]
        assert kinds.count("ova") == 2 and kinds.count("azure") == 2 and kinds.count("ami") == 30
        ova = b.non_registry[0]
        assert ova.name == (
            "ova-photon-3 v1.22.8+vmware.1-tkg.1-d69148b2a4aa7ef6d5380cc365cac8cd (photon 3 amd64)"
        )
        assert ova.origin == "tkr-bom-v1.22.8+vmware.1-tkg.1.yaml ova[0]"

    def test_oldest_tkr_format_without_api_version(self) -> None:
        b = bom("tkr-bom-v1.17.16+vmware.2-tkg.1.yaml")
        assert b.kind == "tkr"
        assert f"{REGISTRY}/pause:3.1" in {i.reference for i in b.images}

    def test_load_bom_reads_a_file(self) -> None:
        path = DATA / "tkg-bom-v1.5.3.yaml"
        assert load_bom(path).images[0].origin.startswith(str(path))


BOM_HEAD = "release:\n  version: v1\n"
IMAGE = "components:\n  c:\n  - version: v1\n    images:\n      k:\n        imagePath: p\n"


class TestBomErrors:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                BOM_HEAD + IMAGE + "        tag: v1\nkubeadmConfigSpec: {}\n",
                r"^b.yaml: imageConfig: missing; every TKG/TKR BOM has imageConfig",
            ),
            (
                BOM_HEAD + IMAGE + "        tag: 3.5\nova: []\nimageConfig:\n"
                "  imageRepository: r.example/tkg\n",
                r"^b.yaml: components.c\[0\].images.k.tag: expected a string, found a number "
                r"\(3.5\); quote it",
            ),
            (
                BOM_HEAD + IMAGE + "        tag: v1\nova: []\nimageConfig:\n"
                "  imageRepository: r.example/TKG\n",
                r"^b.yaml: imageConfig.imageRepository: 'r.example/TKG' is not a registry prefix",
            ),
            (
                BOM_HEAD
                + IMAGE.replace("imagePath: p", "imagePath: Bad//p")
                + "        tag: v1\nova: []\nimageConfig:\n  imageRepository: r.example/tkg\n",
                r"^b.yaml: components.c\[0\].images.k: invalid image reference .*fix imagePath",
            ),
            (
                BOM_HEAD + "ova: []\ncomponents:\n  c: {version: v1}\nimageConfig:\n"
                "  imageRepository: r.example/tkg\n",
                r"^b.yaml: components.c: expected a list, found a mapping",
            ),
            ("just a string\n", r"^b.yaml: \(top level\): expected a mapping"),
            ("imageConfig: {}\n", "cannot tell whether this is a TKG BOM or a TKR BOM"),
            ("a: [1,\n", r"^b.yaml:2: invalid YAML"),
        ],
    )
    def test_malformed_boms(self, text: str, message: str) -> None:
        with pytest.raises(PlanError, match=message) as info:
            parse_bom(text, "b.yaml")
        assert "\n" not in str(info.value)

    def test_real_bom_without_image_config(self) -> None:
        text = (DATA / "tkg-bom-v1.5.3.yaml").read_text()
        text = text.replace(
            "imageConfig:\n  imageRepository: projects.registry.vmware.com/tkg\n", ""
        )
        with pytest.raises(PlanError, match=r"tkg-bom-v1\.5\.3\.yaml: imageConfig: missing"):
            parse_bom(text, "tkg-bom-v1.5.3.yaml")

    def test_alias_bomb_in_a_bom_is_a_one_line_error(self) -> None:
        lines = ["release: {version: v1}", "kubeadmConfigSpec: {}", 'a: &a ["lol","lol"]']
        for n in range(1, 30):
            lines.append(f"a{n}: &a{n} [*a{n - 1 if n > 1 else ''}, *a{n - 1 if n > 1 else ''}]")
        with pytest.raises(PlanError, match=r"^tkr-bom-x.yaml:3: YAML anchors and aliases"):
            parse_bom("\n".join(lines), "tkr-bom-x.yaml")

    def test_kind_can_be_forced(self) -> None:
        text = BOM_HEAD + IMAGE + "        tag: v1\nimageConfig:\n  imageRepository: r.example/x\n"
        assert parse_bom(text, "whatever.yaml", kind="tkr").kind == "tkr"
        assert parse_bom(text, "tkg-bom-v9.yaml").kind == "tkg"


class TestCompatibility:
    def test_tkr_compatibility_v13(self) -> None:
        doc = tkr_compat()
        assert doc.version == "v13"
        assert doc.tkrs_for("v1.5.3") == (
            "v1.20.15+vmware.1-tkg.1",
            "v1.22.8+vmware.1-tkg.1",
            "v1.21.11+vmware.1-tkg.1",
        )
        assert len(doc.all_tkrs()) == 35
        assert doc.all_tkrs()[0] == "v1.20.4+vmware.1-tkg.1"

    def test_unknown_tkg_version(self) -> None:
        with pytest.raises(
            PlanError, match=r"has no v9\.9\.9; known: v1\.3\.0, .*v1\.5\.3; use a newer"
        ):
            tkr_compat().tkrs_for("v9.9.9")

    def test_tkg_compatibility_v7(self) -> None:
        doc = tkg_compat()
        assert doc.version == "v7"
        assert doc.bom_path_for("v1.5.3") == "tkg-bom"
        assert doc.bom_path_for("v9") is None
        assert [p.plugin_version for p in doc.boms][:3] == ["v0.11.1", "v0.11.2", "v0.11.4"]

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("version: 13\nmanagementClusterVersions: []\n", r"version: expected a string"),
            ("version: v13-rc\nmanagementClusterVersions: []\n", "expected v<number>"),
            ("version: v1\n", "is this a compatibility file"),
            (
                "version: v1\nmanagementClusterVersions:\n- version: v1.5.3\n",
                r"managementClusterVersions\[0\].supportedKubernetesVersions: missing",
            ),
        ],
    )
    def test_malformed(self, text: str, message: str) -> None:
        with pytest.raises(PlanError, match=message):
            parse_compatibility(text, "c.yaml")


class TestTags:
    def test_highest_v_tag_ignores_imgpkg_tags_and_compares_numbers(self) -> None:
        tags = ["v2", "v13", "v9", "sha256-abc.imgpkg", "v10-rc", "latest", "v1"]
        assert highest_v_tag(tags) == "v13"
        assert highest_v_tag(["sha256-abc.image-locations.imgpkg"]) is None

    def test_tkr_version_to_tag(self) -> None:
        assert tkr_bom_tag("v1.22.8+vmware.1-tkg.1") == "v1.22.8_vmware.1-tkg.1"
        assert tkr_bom_tag("v1.5.3") == "v1.5.3"
        with pytest.raises(PlanError, match="not make a valid image tag"):
            tkr_bom_tag("v1 2")


BUNDLE_PATHS_1_5_3 = {
    "packages/standard/repo",
    "packages/management/repo",
    "packages/standalone/standalone-plugins",
    "packages/core/repo",
    *(
        f"packages/core/{name}"
        for name in (
            "addons-manager",
            "ako-operator",
            "antrea",
            "calico",
            "kapp-controller",
            "load-balancer-and-ingress-service",
            "metrics-server",
            "pinniped",
            "secretgen-controller",
            "vsphere-cpi",
            "vsphere-csi",
        )
    ),
}


class TestReleasePlan:
    def test_release_set_1_5_3_has_189_references_and_23_bundles(self) -> None:
        plan = plan_1_5_3()
        assert len({e.source for e in plan.entries}) == 189
        assert plan.totals.entries == 189
        assert plan.totals.bundles == 23
        bundles = {
            e.destination.removeprefix(DEST + "/") for e in plan.entries if e.kind == "bundle"
        }
        assert bundles == BUNDLE_PATHS_1_5_3

    def test_release_set_metadata_images(self) -> None:
        metadata = {e.source for e in plan_1_5_3().entries if e.kind is EntryKind.METADATA}
        assert metadata == {
            f"{REGISTRY}/tkg-bom:v1.5.3",
            f"{REGISTRY}/tkr-bom:v1.22.8_vmware.1-tkg.1",
            f"{REGISTRY}/tkr-bom:v1.21.11_vmware.1-tkg.1",
            f"{REGISTRY}/tkr-bom:v1.20.15_vmware.1-tkg.1",
            f"{REGISTRY}/tkr-compatibility:v13",
            f"{REGISTRY}/tkg-compatibility:v7",
        }

    def test_old_script_walk_has_476_references_and_71_bundles(self) -> None:
        plan = plan_old_walk()
        assert len({e.source for e in plan.entries}) == 476
        assert plan.totals.bundles == 71
        assert sum(1 for e in plan.entries if e.kind is EntryKind.METADATA) == 38

    def test_destination_is_prefix_plus_image_path_with_the_source_tag(self) -> None:
        plan = release_plan(("v1.22.8+vmware.1-tkg.1",), dest="registry.corp:5000/air/tkg/")
        by_source = {e.source: e for e in plan.entries}
        kind_node = by_source[f"{REGISTRY}/kind/node:v1.22.8_vmware.1-tkg.1_v0.11.1"]
        assert kind_node.destination == "registry.corp:5000/air/tkg/kind/node"
        assert kind_node.tags == ("v1.22.8_vmware.1-tkg.1_v0.11.1",)
        tkr = by_source[f"{REGISTRY}/tkr-bom:v1.22.8_vmware.1-tkg.1"]
        assert (tkr.destination, tkr.kind) == ("registry.corp:5000/air/tkg/tkr-bom", "metadata")
        assert tkr.origins == ("tkr-bom-v1.22.8+vmware.1-tkg.1.yaml release.version",)

    def test_one_entry_per_reference_with_every_origin(self) -> None:
        entries = {e.source: e for e in plan_1_5_3().entries}
        ako = entries[f"{REGISTRY}/ako:v1.6.1_vmware.4"]
        assert [o.split()[0] for o in ako.origins] == [  # all three TKRs list it
            "tkr-bom-v1.20.15+vmware.1-tkg.1.yaml",
            "tkr-bom-v1.22.8+vmware.1-tkg.1.yaml",
            "tkr-bom-v1.21.11+vmware.1-tkg.1.yaml",
        ]
        tkg_bom = entries[f"{REGISTRY}/tkg-bom:v1.5.3"]
        assert tkg_bom.kind is EntryKind.METADATA
        assert tkg_bom.origins == (
            "tkg-bom-v1.5.3.yaml components.tkg-bom[0].images.tkgBomImage",
            "tkg-bom-v1.5.3.yaml release.version",
        )

    def test_source_prefix_replaces_image_config(self) -> None:
        tkrs = [bom(tkr_bom_filename("v1.22.8+vmware.1-tkg.1"))]
        plan = plan_from_boms(
            bom("tkg-bom-v1.5.3.yaml"), tkrs, [], DEST, "mirror.example/vmw", created=CREATED
        )
        assert all(e.source.startswith("mirror.example/vmw/") for e in plan.entries)
        assert plan.totals.entries == 94 + 48 - 1 + 1  # kind/node:v1.22.8 is in both BOMs

    def test_non_registry_content_and_sources(self) -> None:
        plan = plan_1_5_3()
        assert {a.kind for a in plan.not_registry_content} == {"ova", "ami", "azure"}
        assert sum(a.kind == "ova" for a in plan.not_registry_content) == 6
        assert plan.sources[0] == "tkg-bom-v1.5.3.yaml"
        assert len(plan.sources) == 6

    def test_plan_round_trips_through_yaml(self) -> None:
        plan = plan_1_5_3()
        text = plan.to_yaml()
        assert Plan.from_yaml(text, "plan.yaml") == plan
        assert "  bundles: 23\n" in text

    def test_default_tkr_is_required(self) -> None:
        tkrs = [bom(tkr_bom_filename("v1.21.11+vmware.1-tkg.1"))]
        with pytest.raises(
            PlanError, match=r"default.k8sVersion v1.22.8\+vmware.1-tkg.1 has no TKR"
        ):
            plan_from_boms(bom("tkg-bom-v1.5.3.yaml"), tkrs, [], DEST)

    def test_inputs_are_checked(self) -> None:
        tkg = bom("tkg-bom-v1.5.3.yaml")
        tkr = bom(tkr_bom_filename("v1.22.8+vmware.1-tkg.1"))
        with pytest.raises(PlanError, match="first input must be the TKG BOM"):
            plan_from_boms(tkr, [tkr], [], DEST)
        with pytest.raises(PlanError, match="already given"):
            plan_from_boms(tkg, [tkr, tkr], [], DEST)
        with pytest.raises(UsageError, match="destination prefix 'Harbor/UP' is not a registry"):
            plan_from_boms(tkg, [tkr], [], "Harbor/UP")
