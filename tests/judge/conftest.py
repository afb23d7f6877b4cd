from __future__ import annotations

from collections.abc import Iterator

import pytest

from spillover.judge.mock_server import MockJudgeServer


@pytest.fixture()
def server() -> Iterator[MockJudgeServer]:
    with MockJudgeServer(hang_s=1.0) as srv:
        yield srv
