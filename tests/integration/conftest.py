"""Fixtures for the staging and kojid plugin tests: a koji-like tree of the build tag's RPMs (the
fixture RPMs, the buildroot's tools and the builder's own RPMs) served over HTTP on 127.0.0.1 for the
whole session."""

from __future__ import annotations

import pytest

from tests.conftest import require_tools


@pytest.fixture(scope="session")
def koji_tree(fixture_repo, tmp_path_factory):
    from tests.support.kojicontent import koji_content
    from tests.support.kojitree import build_koji_tree

    require_tools("rpm", "createrepo_c", "apt-get", "dpkg-deb", "git")
    content = koji_content(fixture_repo)
    return build_koji_tree(tmp_path_factory.mktemp("koji") / "topdir", content.rpms, build_group=content.build_group)


@pytest.fixture(scope="session")
def koji_http(koji_tree):
    """The tree served over HTTP for the session; faults and request counts are reset per test."""
    from tests.support.kojitree import TreeServer

    server = TreeServer(koji_tree.topdir)
    yield server
    server.stop()


@pytest.fixture
def tree_server(koji_http):
    koji_http.reset()
    yield koji_http
    koji_http.reset()
