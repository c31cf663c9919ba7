"""After everything the other files did on a host, its log holds no traceback that names LoRA Studio's files.

Runs last for each host (conftest.FILE_ORDER). The hosts' own noise (Neo's built-in ImageStitch and
TorchCompileForForge tracebacks on API generations) names none of our files and is not counted.
"""

from __future__ import annotations

import pytest


@pytest.mark.smoke
def test_no_extension_traceback_in_the_whole_log(host) -> None:  # noqa: ANN001
    found = host.extension_tracebacks()
    assert found == [], f"{len(found)} traceback(s) naming LoRA Studio in {host.log_path}:\n\n" + "\n\n".join(found)
