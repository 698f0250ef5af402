"""``python -m tests.support.fake_cloud_worker worker ...``: the real ``qai-jobs`` CLI whose
``modal`` and ``e2b`` providers talk to the SDK fakes (tests/fakes) instead of the cloud.

The fakes' worlds live in this process (and its forked pool child: run it with
``--concurrency=1``, so one world sees every action); their sandboxes are directories under
``QAI_FAKE_CLOUD_DIR`` and every SDK call is journalled to ``journal.jsonl`` there, for the
test process to read what each call received.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

JOURNAL = "journal.jsonl"


def install(base: Path) -> tuple[Any, Any]:
    from qai_jobs.providers.e2b import sdk as e2b_sdk
    from qai_jobs.providers.modal import sdk as modal_sdk
    from tests.fakes import fake_e2b, fake_modal

    for name in ("modal", "e2b"):
        (base / name).mkdir(parents=True, exist_ok=True)
    modal = fake_modal.build(base / "modal", base / JOURNAL)
    e2b = fake_e2b.build(base / "e2b", base / JOURNAL)
    # The adapters' one seam to their SDK: the module-level import function.
    modal_sdk._sdk = lambda: modal
    e2b_sdk._sdk = lambda: e2b
    return modal, e2b


if __name__ == "__main__":
    install(Path(os.environ["QAI_FAKE_CLOUD_DIR"]))
    from qai_jobs.cli import main

    main()
