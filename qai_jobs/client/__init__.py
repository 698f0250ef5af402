"""Producer APIs: ``WorkspaceClient`` (Postgres + Redis directly), its HTTP twin and the
asyncio HTTP client.

Each returns an action handle from every enqueueing method; ``wait`` gives the kind's typed
result (``qai_jobs.results``): ``handle.wait(timeout)``, or ``await handle.wait(timeout)`` for
``AsyncHttpWorkspaceClient``.
"""

from qai_jobs.client.aio import AsyncHttpWorkspaceClient
from qai_jobs.client.aio.handle import AsyncActionHandle
from qai_jobs.client.direct import WorkspaceClient
from qai_jobs.client.handle import ActionHandle
from qai_jobs.client.http import HttpActionHandle, HttpWorkspaceClient

__all__ = [
    "ActionHandle",
    "AsyncActionHandle",
    "AsyncHttpWorkspaceClient",
    "HttpActionHandle",
    "HttpWorkspaceClient",
    "WorkspaceClient",
]
