"""The preview gateway: ``<preview id>.<WORKSPACE_PREVIEW_DOMAIN>`` -> the workspace's dev server.

``urls`` and ``tokens`` are plain helpers the rest of qai-jobs uses (results, the API); the
server itself (``app``, ``proxy``, ``routes``, ``wake``, ``activity``, ``metrics``, ``serve``)
needs aiohttp and is imported only by ``qai-jobs gateway``.
"""
