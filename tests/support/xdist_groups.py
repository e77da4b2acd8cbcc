"""`--dist loadgroup` that keeps each `xdist_group` on one worker, on pytest 9.2.

pytest-xdist (3.8) tells its scheduler a test's group by appending `@group` to the test's
node id on the worker; it writes that to `item._nodeid`, which pytest 9.2 no longer reads
(node ids became structured: `item._id`). Every group was then silently spread over the
workers, and each worker started the group's shared model or server again
(pytest-dev/pytest-xdist#1386, open). This plugin appends the suffix where pytest 9.2
keeps the id; tests/unit/test_xdist_groups.py fails when either library changes how.
"""

from __future__ import annotations

import pytest
from _pytest.nodeid import NodeId


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # xdist sets `loadgroup` on its workers, where `--dist loadgroup` was asked for.
    if not config.getoption("loadgroup", default=False):
        return
    for item in items:
        groups = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix):  # an xdist that does it itself
            item._id = NodeId.parse(item.nodeid + suffix)
