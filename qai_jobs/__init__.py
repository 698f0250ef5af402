"""qai-jobs: durable, ordered workspace actions for AI coding-agent sandboxes.

from qai_jobs import WorkspaceClient, ActionFailed
client = WorkspaceClient.from_env()
result = client.ensure("proj-1", files={"server.js": "..."}).wait(timeout=120)
"""

from qai_jobs.client import ActionHandle, WorkspaceClient
from qai_jobs.errors import ActionFailed, QaiJobsError, ValidationFailed
from qai_jobs.schemas import KINDS

__all__ = [
    "KINDS",
    "ActionFailed",
    "ActionHandle",
    "QaiJobsError",
    "ValidationFailed",
    "WorkspaceClient",
]
__version__ = "0.1.0"
