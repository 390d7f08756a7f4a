"""Without podman & co. the image tests skip on a laptop and fail under CI=true (`make test` installs them)."""

from __future__ import annotations

import pytest

from scripts import image
from tests.image.conftest import require_image_tools


def test_missing_tools_fail_under_ci_and_skip_elsewhere(monkeypatch):
    monkeypatch.setattr(image, "missing_tools", lambda: ["podman"])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_image_tools()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="make image-tools"):
        require_image_tools()


def test_base_recipe_hash_names_the_cached_tarball(monkeypatch):
    before = image.base_tarball()
    assert image.base_recipe_hash() in before.name
    monkeypatch.setattr(image, "BASE_PACKAGES", [*image.BASE_PACKAGES, "curl"])
    assert image.base_tarball() != before  # a changed recipe never reuses an old tarball


def test_mirror_is_the_one_apt_uses():
    assert image.apt_mirror().startswith(("http://", "https://"))
