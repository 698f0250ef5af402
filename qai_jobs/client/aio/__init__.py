"""The HTTP client for asyncio producers: the methods of ``HttpWorkspaceClient``, awaited."""

from qai_jobs.client.aio.client import AsyncHttpWorkspaceClient
from qai_jobs.client.aio.handle import AsyncActionHandle

__all__ = ["AsyncActionHandle", "AsyncHttpWorkspaceClient"]
