"""Producer APIs: ``WorkspaceClient`` (Postgres + Redis directly) and its HTTP twin.

Both return an :class:`ActionHandle` from every enqueueing method; ``wait`` gives the kind's
typed result (``qai_jobs.results``).
"""

from qai_jobs.client.direct import WorkspaceClient
from qai_jobs.client.handle import ActionHandle
from qai_jobs.client.http import HttpActionHandle, HttpWorkspaceClient

__all__ = ["ActionHandle", "HttpActionHandle", "HttpWorkspaceClient", "WorkspaceClient"]
