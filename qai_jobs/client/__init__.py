"""Producer APIs: ``WorkspaceClient`` (Postgres + Redis directly) and its HTTP twin."""

from qai_jobs.client.direct import ActionHandle, WorkspaceClient
from qai_jobs.client.http import HttpActionHandle, HttpWorkspaceClient

__all__ = ["ActionHandle", "HttpActionHandle", "HttpWorkspaceClient", "WorkspaceClient"]
