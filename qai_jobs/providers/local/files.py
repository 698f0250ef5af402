"""The local provider's file operations on a sandbox's tree, symlink-safe (``fs``) and hashed
through the sandbox's hash cache."""

from __future__ import annotations

from collections.abc import Sequence

from qai_jobs.config import Settings
from qai_jobs.providers.base import ReadBudget, Sandbox
from qai_jobs.providers.local.fs import SafeTree
from qai_jobs.providers.local.hashcache import HashCache
from qai_jobs.providers.local.layout import Layout
from qai_jobs.sync import sha256


class LocalFiles:
    """Mixed into ``LocalProvider``, which supplies the settings and the sandbox's layout."""

    settings: Settings

    def _existing(self, sb: Sandbox) -> Layout:
        raise NotImplementedError

    def write_files(self, sb: Sandbox, files: Sequence[tuple[str, bytes]]) -> None:
        layout = self._existing(sb)
        tree = SafeTree(layout.tree)
        cache = HashCache.at(layout.base / "hashcache.json")
        try:
            for path, data in files:
                cache.record(path, tree.write(path, data), sha256(data))
        finally:
            cache.save()

    def delete_files(self, sb: Sandbox, paths: Sequence[str]) -> list[str]:
        tree = SafeTree(self._existing(sb).tree)
        deleted = [path for path in paths if tree.delete(path)]
        for path in deleted:
            tree.prune_empty_parents(path)
        return deleted

    def read_files(self, sb: Sandbox, paths: Sequence[str]) -> dict[str, bytes | None]:
        tree = SafeTree(self._existing(sb).tree)
        wanted = list(dict.fromkeys(paths))
        sizes = {path: size for path in wanted if (size := tree.size(path)) is not None}
        budget = ReadBudget(self.settings, sizes)  # refused here, before a byte is read
        found: dict[str, bytes | None] = {}
        for path in wanted:
            data = tree.read(path, budget.cap()) if path in sizes else None
            if data is not None:
                budget.spend(path, len(data))
            found[path] = data
        return found

    def hashes(self, sb: Sandbox, paths: Sequence[str] | None = None) -> dict[str, str]:
        layout = self._existing(sb)
        tree = SafeTree(layout.tree)
        cap = self.settings.tracked_max_file_bytes
        if paths is None:
            return tree.manifest(cap)
        cache = HashCache.at(layout.base / "hashcache.json")
        found = cache.hashes(tree, paths, cap)
        cache.save()
        return found
