"""Plan model: normalisation, merging, totals and the YAML/JSON plan file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from transship.digest import Digest
from transship.errors import ExitCode, InvalidReferenceError
from transship.plan import (
    API_VERSION,
    EntryKind,
    NonRegistryArtifact,
    Plan,
    PlanEntry,
    PlanError,
    merge_entries,
)
from transship.plan import _yaml as plan_yaml
from transship.plan._yaml import load_yaml

DIGEST_A = Digest.parse("sha256:" + "a" * 64)
DIGEST_B = Digest.parse("sha256:" + "b" * 64)
CREATED = "2024-05-01T12:00:00Z"


def entry(source: str, dest: str, **kwargs: object) -> PlanEntry:
    return PlanEntry.create(source, dest, **kwargs)  # type: ignore[arg-type]


def sample_plan() -> Plan:
    return Plan(
        (
            entry("src.example/tkg/antrea:v1", "harbor.local/tkg/antrea", origins=["a.txt:1"]),
            entry(
                "src.example/tkg/pause:3.5",
                "harbor.local/tkg/pause",
                origins=["tkr.yaml components.kubernetes[0].images.pause"],
                source_digest=DIGEST_A,
                size=1234,
            ),
            entry(
                "src.example/tkg/packages/core/repo:v1.22.8_vmware.1-tkg.1",
                "harbor.local/tkg/packages/core/repo",
                kind=EntryKind.BUNDLE,
                origins=["tkr.yaml components.tkg-core-packages[0].images.repo"],
                expanded=False,
            ),
            entry("src.example/tkg/tkg-bom:v1.5.3", "harbor.local/tkg/tkg-bom", kind="metadata"),
        ),
        sources=("tkr.yaml", "a.txt"),
        created=CREATED,
        not_registry_content=(
            NonRegistryArtifact("ova", "ova-photon-3 v1.22.8", "tkr.yaml ova[0]"),
        ),
    )


class TestPlanEntry:
    def test_normalises_references_and_defaults_tags_to_the_source_tag(self) -> None:
        e = entry("nginx:1.25", "harbor.local/mirror/nginx")
        assert e.source == "docker.io/library/nginx:1.25"
        assert e.destination == "harbor.local/mirror/nginx"
        assert e.tags == ("1.25",)
        assert e.kind is EntryKind.IMAGE
        assert e.source_digest is None

    def test_untagged_source_means_latest(self) -> None:
        assert entry("busybox", "h.local/x/busybox").source == "docker.io/library/busybox:latest"

    def test_digest_pinned_source_records_digest_and_has_no_tag(self) -> None:
        e = entry(f"src.example/a@{DIGEST_A}", "h.local/a")
        assert e.source_digest == DIGEST_A
        assert e.tags == ()

    def test_pinned_and_resolved_digests_must_agree(self) -> None:
        with pytest.raises(InvalidReferenceError, match="pinned"):
            entry(f"src.example/a@{DIGEST_A}", "h.local/a", source_digest=DIGEST_B)

    def test_destination_must_be_a_repository(self) -> None:
        with pytest.raises(InvalidReferenceError, match="repository is expected"):
            entry("src.example/a:v1", "h.local/a:v1")

    def test_bad_tag_is_refused(self) -> None:
        with pytest.raises(InvalidReferenceError, match="tag"):
            entry("src.example/a:v1", "h.local/a", tags=["v1", "+bad"])

    def test_merge_unions_tags_and_origins_and_keeps_the_stronger_kind(self) -> None:
        a = entry("s.example/p:v1", "h.local/p", origins=["x:1"])
        b = entry("s.example/p:v1", "h.local/p", tags=["extra"], kind="bundle", origins=["y:2"])
        merged = a.merged_with(b)
        assert merged.tags == ("extra", "v1")
        assert merged.origins == ("x:1", "y:2")
        assert merged.kind is EntryKind.BUNDLE

    def test_metadata_wins_over_image(self) -> None:
        a = entry("s.example/tkg-bom:v1", "h.local/tkg-bom")
        b = entry("s.example/tkg-bom:v1", "h.local/tkg-bom", kind="metadata")
        assert a.merged_with(b).kind is EntryKind.METADATA
        assert b.merged_with(a).kind is EntryKind.METADATA

    def test_merge_keeps_a_resolved_digest(self) -> None:
        a = entry("s.example/p:v1", "h.local/p")
        b = entry("s.example/p:v1", "h.local/p", source_digest=DIGEST_A, size=5)
        merged = a.merged_with(b)
        assert (merged.source_digest, merged.size) == (DIGEST_A, 5)

    def test_conflicting_digests_are_an_error(self) -> None:
        a = entry("s.example/p:v1", "h.local/p", source_digest=DIGEST_A, origins=["one"])
        b = entry("s.example/p:v1", "h.local/p", source_digest=DIGEST_B, origins=["two"])
        with pytest.raises(PlanError, match="tag moved") as info:
            a.merged_with(b)
        assert info.value.exit_code == ExitCode.USAGE
        assert "\n" not in str(info.value)


class TestPlan:
    def test_deduplicates_by_source_and_destination(self) -> None:
        entries = [
            entry("s.example/p:v1", "h.local/p", origins=["a:1"]),
            entry("s.example/p:v1", "h.local/p", origins=["a:2"]),
            entry("s.example/p:v1", "other.local/p", origins=["a:3"]),
        ]
        plan = Plan(tuple(entries), created=CREATED)
        assert [e.destination for e in plan.entries] == ["h.local/p", "other.local/p"]
        assert plan.entries[0].origins == ("a:1", "a:2")

    def test_entries_are_sorted_by_destination_then_source(self) -> None:
        entries = (
            entry("s.example/b:2", "h.local/b"),
            entry("s.example/a:1", "h.local/a"),
            entry("s.example/b:1", "h.local/b"),
        )
        assert [e.source for e in merge_entries(entries)] == [
            "s.example/a:1",
            "s.example/b:1",
            "s.example/b:2",
        ]

    def test_totals(self) -> None:
        totals = sample_plan().totals
        assert (totals.entries, totals.repositories, totals.bundles) == (4, 4, 1)

    def test_merge_combines_plans(self) -> None:
        extra = Plan((entry("src.example/tkg/antrea:v1", "harbor.local/tkg/antrea"),), ("b",))
        merged = sample_plan().merge(extra)
        assert merged.totals.entries == 4
        assert merged.sources == ("tkr.yaml", "a.txt", "b")
        assert merged.created == CREATED

    def test_created_defaults_to_now_in_utc(self) -> None:
        assert Plan(()).created.endswith("Z")


class TestPlanFile:
    def test_yaml_round_trips_exactly(self) -> None:
        plan = sample_plan()
        text = plan.to_yaml()
        again = Plan.from_yaml(text, "plan.yaml")
        assert again == plan
        assert again.to_yaml() == text

    def test_libyaml_writes_and_reads_what_pure_python_pyyaml_does(self) -> None:
        """Plans go through libyaml (a tenth of the CPU on plans of thousands of entries):
        the same text as PyYAML's pure-Python safe dumper, the same data as its loader."""
        plan = replace(sample_plan(), destination_prefix="harbor.local", unique_bytes=4321)
        text = plan.to_yaml()
        pure = yaml.safe_dump(
            plan.to_dict(), sort_keys=False, allow_unicode=True, width=4096, indent=2
        )
        assert text.endswith(pure)
        assert load_yaml(text, "plan.yaml").value == yaml.safe_load(text)
        assert yaml.__with_libyaml__, "PyYAML without libyaml: large plans load 6x slower"
        assert plan_yaml._loader() is yaml.CSafeLoader and plan_yaml._dumper() is yaml.CSafeDumper

    def test_yaml_is_readable(self) -> None:
        text = sample_plan().to_yaml()
        assert text.startswith("# transship plan")
        assert f"apiVersion: {API_VERSION}\n" in text
        assert "  tags:\n  - '3.5'\n" in text  # quoted: would otherwise read back as a float
        assert "not registry content — import separately" in text
        assert "sourceDigest: sha256:" + "a" * 64 in text

    def test_destination_prefix_and_unique_bytes_are_kept(self) -> None:
        plan = replace(sample_plan(), destination_prefix="harbor.local", unique_bytes=4321)
        text = plan.to_yaml()
        assert "destinationPrefix: harbor.local\n" in text and "  bytes: 4321\n" in text
        assert Plan.from_yaml(text, "plan.yaml") == plan
        assert Plan.from_yaml(plan.to_json(), "plan.json") == plan
        elsewhere = text.replace("destinationPrefix: harbor.local", "destinationPrefix: o.example")
        with pytest.raises(PlanError, match=r"entries\[0\]: destination .* not under .*o.example"):
            Plan.from_yaml(elsewhere, "plan.yaml")
        schemed = text.replace("destinationPrefix: harbor.local", "destinationPrefix: http://h.x")
        with pytest.raises(PlanError, match=r"destinationPrefix: 'http://h\.x' is not a registry"):
            Plan.from_yaml(schemed, "plan.yaml")
        same = Plan((), destination_prefix="harbor.local")
        assert plan.merge(same).destination_prefix == "harbor.local"
        assert plan.merge(Plan(())).destination_prefix == "harbor.local"
        assert plan.merge(Plan((), destination_prefix="o.example")).destination_prefix is None

    def test_json_has_the_same_content_and_reads_back(self) -> None:
        plan = sample_plan()
        data = json.loads(plan.to_json())
        assert data["totals"] == {"entries": 4, "repositories": 4, "bundles": 1}
        assert data["entries"][0]["kind"] == "image"
        assert Plan.from_yaml(plan.to_json(), "plan.json") == plan

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (("apiVersion: transship/v1alpha1", "apiVersion: v9"), "unsupported plan version"),
            (("kind: Plan", "kind: Other"), "is this a plan file"),
            (("  kind: image", "  kind: picture"), r"entries\[0\]\.kind: unknown kind"),
            (("  - v1\n", "  - 1.5\n"), r"entries\[0\]\.tags\[0\]: expected a string.*quote"),
            (("  sourceDigest: null\n", "  sourceDigest: md5:1\n"), "sourceDigest"),
            (("  destination: harbor.local/tkg/antrea", "  destinaton: x"), "unknown key"),
            (("  destination: harbor.local/tkg/antrea", "  destination: Bad/UPPER"), "correct"),
            ((f"created: '{CREATED}'", "created: ''"), "created: must not be empty"),
            (("  size: 1234", "  size: -1"), "size in bytes"),
            (("  expanded: false", "  expanded: maybe"), "true or false"),
        ],
    )
    def test_bad_plan_files_give_one_line_errors(
        self, change: tuple[str, str], message: str
    ) -> None:
        text = sample_plan().to_yaml()
        assert change[0] in text
        with pytest.raises(PlanError, match=message) as info:
            Plan.from_yaml(text.replace(change[0], change[1], 1), "plan.yaml")
        assert str(info.value).startswith("plan.yaml")
        assert "\n" not in str(info.value)

    def test_duplicate_entries_are_refused(self) -> None:
        text = sample_plan().to_yaml()
        start = text.index("entries:\n") + len("entries:\n")
        first = text[start : text.index("- source", start + 1)]
        doubled = text.replace(first, first + first, 1)
        with pytest.raises(PlanError, match=r"entries\[1\]: same source and destination"):
            Plan.from_yaml(doubled, "plan.yaml")

    def test_invalid_yaml_names_the_line(self) -> None:
        with pytest.raises(PlanError, match=r"^plan.yaml:3: invalid YAML"):
            Plan.from_yaml("apiVersion: x\nkind: Plan\n  entries: []\n", "plan.yaml")

    def test_alias_bomb_is_a_one_line_error(self) -> None:
        bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
        for n in range(1, 10):
            bomb.append(f"{chr(97 + n)}: &{chr(97 + n)} [{', '.join(['*' + chr(96 + n)] * 9)}]")
        with pytest.raises(PlanError, match=r"^plan.yaml:1: YAML anchors and aliases") as info:
            Plan.from_yaml("\n".join(bomb), "plan.yaml")
        assert "\n" not in str(info.value)

    def test_a_plan_must_be_a_mapping(self) -> None:
        with pytest.raises(PlanError, match="expected a mapping, found a list"):
            Plan.from_yaml("- a\n- b\n", "plan.yaml")


def test_an_image_locations_record_is_built_once_for_the_check_and_the_copy() -> None:
    """A plan's image-locations entry is checked against its digest when read, and its copy
    task serves the same record: built once per run (JSON, a tar and a gzip each time), from
    any iterable of the same rows."""
    from transship.imgpkg.locations import ImageLocation, build_image_locations

    rows = (ImageLocation("reg.example/app@sha256:" + "cd" * 32, False),)
    first = build_image_locations(rows)
    assert build_image_locations(list(rows)) is first
    assert build_image_locations(iter(rows)) is first
    other = build_image_locations((ImageLocation("reg.example/app@sha256:" + "ef" * 32, True),))
    assert other.digest != first.digest
