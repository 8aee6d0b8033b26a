from __future__ import annotations

import pytest

from confserve.errors import Status
from confserve.serving import (
    AllVersions,
    ConfigError,
    FileSystemSource,
    LatestVersions,
    ModelConfig,
    PlainOpener,
    SpecificVersions,
    parse_model_server_config,
    select_versions,
)
from confserve.serving._policy import parse_version_dir

CONFIG = """
model_config_list {
  config {
    name: "clf"
    base_path: "/models/clf"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
  config { name: "all" base_path: "/m/all" model_version_policy { all {} } }
  config { name: "two" base_path: "/m/two" model_version_policy { latest { num_versions: 2 } } }
  config { name: "plain" base_path: "/m/plain" }
}
"""


def test_parse_full_config() -> None:
    clf, all_, two, plain = parse_model_server_config(CONFIG)
    assert clf.name == "clf"
    assert clf.base_path == "/models/clf"
    assert clf.version_policy == SpecificVersions(frozenset({1, 3}))
    assert dict(clf.version_labels) == {"stable": 1, "canary": 3}
    assert all_.version_policy == AllVersions()
    assert two.version_policy == LatestVersions(2)
    assert plain.version_policy == LatestVersions(1)
    assert plain.platform == "tensorflow"


def test_empty_config_has_no_models() -> None:
    assert parse_model_server_config("") == ()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model_config_list { config { name: 'a' } }", "base_path is required"),
        ("model_config_list { config { name: '' base_path: '/x' } }", "invalid model name"),
        ("model_config_list { config { name: 'a/b' base_path: '/x' } }", "invalid model name"),
        (
            "model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }",
            "unsupported model_platform",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }",
            "duplicate model name",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/x' "
            "version_labels { key: 'b-c' value: 1 } } }",
            "invalid version label",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/x' model_version_policy { specific {} } } }",
            "lists no versions",
        ),
        ("custom_model_config { }", "unsupported ModelServerConfig field"),
        ("model_config_list { bogus: 1 }", "Error parsing text-format tensorflow.serving.ModelServerConfig"),
    ],
)
def test_bad_configs_rejected(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_model_server_config(text)
    assert info.value.status is Status.INVALID_ARGUMENT


def test_latest_zero_means_one() -> None:
    (model,) = parse_model_server_config(
        "model_config_list { config { name: 'a' base_path: '/x' model_version_policy { latest {} } } }"
    )
    assert model.version_policy == LatestVersions(1)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (LatestVersions(1), {9}),
        (LatestVersions(2), {9, 5}),
        (LatestVersions(10), {1, 5, 9}),
        (AllVersions(), {1, 5, 9}),
        (SpecificVersions(frozenset({5, 7})), {5}),
    ],
)
def test_select_versions(policy: LatestVersions | AllVersions | SpecificVersions, expected: set[int]) -> None:
    assert select_versions(policy, [1, 9, 5]) == expected
    assert select_versions(policy, []) == frozenset()


@pytest.mark.parametrize(
    ("name", "expected"), [("1", 1), ("0007", 7), ("-1", None), ("1a", None), ("", None), ("9" * 19, None)]
)
def test_parse_version_dir(name: str, expected: int | None) -> None:
    assert parse_version_dir(name) == expected


class FakeOpener:
    def __init__(self, trees: dict[str, list[str]]) -> None:
        self.trees = trees

    def read_bytes(self, path: str) -> bytes:
        raise AssertionError("source must not read files")

    def list_files(self, directory: str) -> list[str]:
        if directory not in self.trees:
            raise FileNotFoundError(directory)
        return self.trees[directory]


def test_source_publishes_policy_selection_and_labels() -> None:
    opener = FakeOpener(
        {
            "/m/a": [
                "1/saved_model.pb",
                "2/saved_model.pb",
                "2/variables/variables.index",
                "3/variables/variables.index",  # no saved_model.pb yet: not a version
                "tmp/saved_model.pb",  # not a number
                "4/sub/saved_model.pb",  # not directly in the version directory
            ]
        }
    )
    config = ModelConfig("a", "/m/a", version_policy=AllVersions(), version_labels={"stable": 1})
    (published,) = FileSystemSource([config], opener).poll()
    assert published.model == "a"
    assert dict(published.paths) == {1: "/m/a/1", 2: "/m/a/2"}
    assert dict(published.labels) == {"stable": 1}


def test_source_omits_unlistable_model_and_keeps_others() -> None:
    opener = FakeOpener({"/m/b": ["5/saved_model.pb"]})
    source = FileSystemSource([ModelConfig("a", "/m/missing"), ModelConfig("b", "/m/b")], opener)
    assert [p.model for p in source.poll()] == ["b"]
    assert source.model_names == {"a", "b"}


def test_source_publishes_empty_set_when_policy_matches_nothing() -> None:
    opener = FakeOpener({"/m/a": ["1/saved_model.pb"]})
    config = ModelConfig("a", "/m/a", version_policy=SpecificVersions(frozenset({2})))
    (published,) = FileSystemSource([config], opener).poll()
    assert dict(published.paths) == {}


def test_plain_opener(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "1" / "variables").mkdir(parents=True)
    (root / "1" / "saved_model.pb").write_bytes(b"pb")
    (root / "1" / "variables" / "v.index").write_bytes(b"ix")
    opener = PlainOpener()
    assert opener.list_files(str(root)) == ["1/saved_model.pb", "1/variables/v.index"]
    assert opener.read_bytes(str(root / "1" / "saved_model.pb")) == b"pb"
    with pytest.raises(FileNotFoundError):
        opener.list_files(str(root / "nope"))
